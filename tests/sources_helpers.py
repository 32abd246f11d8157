"""Shared helpers for the source tests: where the real data is, and Einthoven's law with a derived tolerance."""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# (source name, folder under DATA, source options): every folder of real WFDB records the tests convert.
REAL_FOLDERS = [
    ("ludb", "ludb", {}),
    ("georgia", "cinc2021", {}),
    ("cpsc2018", "cpsc2018", {}),
    ("chapman", "chapman", {}),
    ("ptbxl", "ptbxl", {"rate": 100}),
    ("ptbdb", "ptbdb", {}),
    ("code15", "code15", {}),
]

# Canonical order: I, II, III, aVR, aVL, aVF. Each relation is sum(coef * lead) == 0 for a true 12-lead ECG.
# The last three (together equivalent to aVR + aVL + aVF = 0 given II = I + III) also tell aVL from aVF.
RELATIONS: dict[str, dict[int, float]] = {
    "II = I + III": {1: 1.0, 0: -1.0, 2: -1.0},
    "aVR = -(I + II) / 2": {3: 1.0, 0: 0.5, 1: 0.5},
    "aVL = I - II / 2": {4: 1.0, 0: -1.0, 1: 0.5},
    "aVF = II - I / 2": {5: 1.0, 1: -1.0, 0: 0.5},
}
F16_HALF_ULP = 2.0**-11  # float16 keeps 10 mantissa bits: relative rounding error <= 2^-11


def device_step(digital: np.ndarray) -> float:
    """Resolution of the recording device in stored units, from the data: the median gap between the distinct
    stored values of the limb leads (1 when the file was quantised directly; ~4.88 for the CSN/Ningbo files,
    whose device resolution is 4.88 uV stored at 1 uV per unit)."""
    gaps = [np.diff(np.unique(row[np.isfinite(row)])) for row in digital]
    gaps = np.concatenate([g for g in gaps if g.size])
    return float(np.median(gaps)) if gaps.size else 1.0


@lru_cache(maxsize=16)
def resample_l1_gain(fs_in: float, fs_out: int = 500) -> float:
    """Largest sum of |weights| of one output sample of the polyphase resampler: how much a bounded input error
    can grow through resampling (exactly 1 when no resampling happens)."""
    if fs_in == fs_out:
        return 1.0
    ratio = Fraction(fs_out) / Fraction(fs_in).limit_denominator(1000)
    n = 64 * max(ratio.numerator, ratio.denominator)
    eye = np.eye(n)
    out = resample_poly(eye, ratio.numerator, ratio.denominator, axis=0)  # column j = response to impulse j
    core = out[out.shape[0] // 4 : 3 * out.shape[0] // 4]  # away from the edges
    return float(np.abs(core).sum(axis=1).max())


def quantisation_bound(relation: dict[int, float], step_mv: float) -> float:
    """Worst |sum(coef * lead)| from rounding alone when each lead is stored with error <= step_mv (two roundings:
    device resolution, then the file's unit, are folded into ``step_mv`` by the caller)."""
    return sum(abs(c) for c in relation.values()) * step_mv / 2


def einthoven_excess(ecg: np.ndarray, step_mv: float, fs_in: float, stat=np.max) -> dict[str, float]:
    """For a canonical ``[12, n]`` ECG, the largest ratio |residual| / allowed over samples, per relation.

    allowed(t) = resample_gain * rounding bound + float16 rounding of the terms at t; ratios <= 1 pass.
    ``stat`` reduces the per-sample ratios (``np.max``: every sample; ``np.median``: the typical sample).
    """
    x = ecg.astype(np.float64)
    gain = resample_l1_gain(fs_in)
    out = {}
    for name, rel in RELATIONS.items():
        resid = sum(c * x[i] for i, c in rel.items())
        f16 = F16_HALF_ULP * sum(abs(c) * np.abs(x[i]) for i, c in rel.items())
        allowed = gain * quantisation_bound(rel, step_mv) + f16 + 1e-9
        out[name] = float(stat(np.abs(resid) / allowed))
    return out
