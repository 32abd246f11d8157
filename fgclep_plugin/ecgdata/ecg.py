"""The canonical ECG: 12 leads in a fixed order, 500 Hz, 10 s, millivolts, float16.

Every converter ends in :func:`canonicalize`, so one definition of "an ECG" serves training, stage 2 and
evaluation. The rules, in the order they are applied:

1. **Leads by name.** Names are matched case-insensitively through :func:`canonical_lead_name`
   (``i``, ``AVR``, ``lead_v1`` ...); positions are never trusted. Extra channels (Frank ``vx vy vz``) and
   inverted leads (Cabrera's ``-aVR``) are ignored. A missing limb lead is derived when two of I, II, III are present (Einthoven: II = I + III;
   aVR = -(I + II) / 2, aVL = I - II / 2, aVF = II - I / 2) and listed in ``meta["derived_leads"]``;
   a missing precordial lead rejects the record (``missing-lead``).
2. **NaN repair.** Runs of NaN up to ``max_nan_gap_s`` long are linearly interpolated (``nan_repaired``
   counts the samples); a longer run, or a lead that is all NaN, rejects the record (``nan-gap``). Only the
   part of a long record that is kept (the 10 s window of rule 4 plus 1 s of filter margin) is judged.
3. **Resampling** to 500 Hz with a polyphase filter (``scipy.signal.resample_poly``) at the exact rational
   ratio.
4. **Duration.** Longer records are cropped to 10 s from ``crop`` (``"start"``: the first 10 s, the default;
   ``"center"``: the middle 10 s, starting on the nearest original sample); the offset is kept in
   ``meta["crop_start_s"]``. Records shorter than
   ``min_seconds`` are rejected (``too-short``); records between ``min_seconds`` and 10 s are padded at the
   end with each lead's last value (``meta["padded_s"]``). ``meta["seconds_original"]`` keeps the true length.
5. **Flat leads.** A lead whose peak-to-peak range is below ``flat_mv`` is listed in ``meta["flat_leads"]``;
   if every lead is flat the record is rejected (``flat-signal``), as it is when any sample exceeds
   ``max_abs_mv`` (``amplitude``: almost always a unit error, e.g. microvolts stored as millivolts).
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

import numpy as np

from .records import EcgRecord, RejectError

LEADS: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
FS = 500
SECONDS = 10
N_SAMPLES = FS * SECONDS
LIMB = ("I", "II", "III", "aVR", "aVL", "aVF")

_BY_LOWER = {name.lower(): name for name in LEADS}
_ALIASES = {"d1": "I", "d2": "II", "d3": "III", "di": "I", "dii": "II", "diii": "III"}


def canonical_lead_name(name: str) -> str | None:
    """Map a lead label as found in a file (``'avr'``, ``'AVR'``, ``'Lead I'``, ``'lead-II'``) to its canonical
    name, or None.

    Only a ``lead`` prefix and the separator after it are dropped: a separator inside the name stays, so ``I-II``
    (a difference of leads) is not read as ``III``.
    """
    s = str(name).strip().lower()
    if s.startswith("-"):
        return None  # an inverted lead (Cabrera's -aVR) is not the lead: never take it with the wrong sign
    s = re.sub(r"^lead[\s_\-]*", "", s)
    return _BY_LOWER.get(s) or _ALIASES.get(s)


def _leads_by_name(rec: EcgRecord) -> dict[str, np.ndarray]:
    sig = np.asarray(rec.signal, dtype=np.float64)
    if sig.ndim != 2 or sig.shape[0] != len(rec.lead_names):
        raise RejectError(
            "bad-shape",
            f"{rec.record_id}: signal shape {sig.shape} does not match {len(rec.lead_names)} lead names",
        )
    found: dict[str, np.ndarray] = {}
    for name, row in zip(rec.lead_names, sig):
        canon = canonical_lead_name(name)
        if canon is None:
            continue
        if canon in found:
            raise RejectError(
                "duplicate-lead", f"{rec.record_id}: lead {canon} appears twice ({rec.lead_names})"
            )
        found[canon] = row
    return found


def _derive_limb_leads(leads: dict[str, np.ndarray]) -> list[str]:
    """Fill missing limb leads from any two of I, II, III; returns the names derived."""
    derived = []
    have = [n for n in ("I", "II", "III") if n in leads]
    if len(have) == 2:
        if "I" not in leads:
            leads["I"] = leads["II"] - leads["III"]
            derived.append("I")
        elif "II" not in leads:
            leads["II"] = leads["I"] + leads["III"]
            derived.append("II")
        else:
            leads["III"] = leads["II"] - leads["I"]
            derived.append("III")
    if "I" in leads and "II" in leads:
        i, ii = leads["I"], leads["II"]
        for name, value in (("aVR", -(i + ii) / 2), ("aVL", i - ii / 2), ("aVF", ii - i / 2)):
            if name not in leads:
                leads[name] = value
                derived.append(name)
    return derived


def repair_nans(x: np.ndarray, max_gap: int, record_id: str = "") -> tuple[np.ndarray, int]:
    """Linearly interpolate NaN runs of at most ``max_gap`` samples in each row of ``x``; returns (x, n_repaired)."""
    bad = ~np.isfinite(x)
    if not bad.any():
        return x, 0
    x = x.copy()
    idx = np.arange(x.shape[1])
    for row in range(x.shape[0]):
        mask = bad[row]
        if not mask.any():
            continue
        if mask.all():
            raise RejectError("nan-gap", f"{record_id}: lead {LEADS[row]} is entirely NaN")
        edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        longest = int((ends - starts).max())
        if longest > max_gap:
            raise RejectError(
                "nan-gap",
                f"{record_id}: lead {LEADS[row]} has a NaN run of {longest} samples (max {max_gap})",
            )
        x[row, mask] = np.interp(idx[mask], idx[~mask], x[row, ~mask])
    return x, int(bad.sum())


def resample(x: np.ndarray, fs_in: float, fs_out: int = FS) -> np.ndarray:
    """Polyphase resampling of ``x`` ``[leads, n]`` along the last axis from ``fs_in`` to ``fs_out`` Hz."""
    if fs_in == fs_out:
        return x
    from scipy.signal import resample_poly  # start-up time: about 1 s; the fgclep parser imports this module

    ratio = Fraction(fs_out) / Fraction(fs_in).limit_denominator(1000)
    return resample_poly(x, ratio.numerator, ratio.denominator, axis=-1)


def canonicalize(
    rec: EcgRecord,
    *,
    min_seconds: float = 8.0,
    crop: str = "start",
    max_nan_gap_s: float = 0.1,
    flat_mv: float = 0.01,
    max_abs_mv: float = 30.0,
    min_fs: float = 50.0,
    max_fs: float = 20000.0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Bring a record to the canonical ``float16 [12, 5000]`` mV form; returns (ecg, metadata). See module doc.

    A sampling rate outside ``[min_fs, max_fs]`` is a header error, not an ECG (0.5 Hz would make a 10 s ECG
    of 5 samples): rejected as ``bad-fs``."""
    rid = f"{rec.source}:{rec.record_id}"
    if not rec.fs or not np.isfinite(rec.fs) or rec.fs <= 0:
        raise RejectError("bad-fs", f"{rid}: sampling rate {rec.fs!r}")
    if not min_fs <= rec.fs <= max_fs:
        raise RejectError(
            "bad-fs",
            f"{rid}: sampling rate {rec.fs:g} Hz is outside [{min_fs:g}, {max_fs:g}] Hz "
            "(override with --min-fs / --max-fs)",
        )
    leads = _leads_by_name(rec)
    derived = _derive_limb_leads(leads)
    missing = [n for n in LEADS if n not in leads]
    if missing:
        raise RejectError(
            "missing-lead", f"{rid}: no lead(s) {', '.join(missing)} among {list(rec.lead_names)}"
        )
    x = np.stack([leads[n] for n in LEADS])
    n_orig = x.shape[1]
    seconds = n_orig / float(rec.fs)
    if seconds < min_seconds:
        raise RejectError("too-short", f"{rid}: {seconds:.2f} s < minimum {min_seconds} s")
    max_gap = max(1, round(max_nan_gap_s * rec.fs))

    # Crop before resampling when much longer (saves work), keeping a margin for the filter's edge. NaN runs
    # are judged inside the cropped window only: a gap in a part of the record that is not kept rejects nothing.
    crop_start_s = 0.0
    if seconds > SECONDS:
        if crop not in ("start", "center"):
            raise ValueError(f"crop must be 'start' or 'center', not {crop!r}")
        a = 0 if crop == "start" else round((seconds - SECONDS) / 2 * rec.fs)
        crop_start_s = a / float(rec.fs)  # the true start: a whole sample of the original record
        margin = int(rec.fs)  # 1 s either side
        lo, hi = max(0, a - margin), min(n_orig, a + int(np.ceil(SECONDS * rec.fs)) + margin)
        x, n_repaired = repair_nans(x[:, lo:hi], max_gap, rid)
        x = resample(x, rec.fs)
        off = round((a - lo) * FS / rec.fs)
        x = x[:, off : off + N_SAMPLES]
    else:
        x, n_repaired = repair_nans(x, max_gap, rid)
        x = resample(x, rec.fs)
    padded = N_SAMPLES - x.shape[1]
    if padded > 0:
        x = np.concatenate([x, np.repeat(x[:, -1:], padded, axis=1)], axis=1)
    x = x[:, :N_SAMPLES]

    peak = float(np.abs(x).max())
    if peak > max_abs_mv:
        raise RejectError(
            "amplitude", f"{rid}: |signal| reaches {peak:.1f} mV (> {max_abs_mv} mV; wrong units?)"
        )
    ptp = np.ptp(x, axis=1)
    flat = [LEADS[i] for i in np.flatnonzero(ptp < flat_mv)]
    if len(flat) == len(LEADS):
        raise RejectError("flat-signal", f"{rid}: every lead is flat (peak-to-peak < {flat_mv} mV)")
    meta = {
        "fs_original": float(rec.fs),
        "n_samples_original": int(n_orig),
        "seconds_original": round(seconds, 4),
        "lead_names_found": list(rec.lead_names),
        "derived_leads": derived,
        "nan_repaired": n_repaired,
        "crop_start_s": round(crop_start_s, 4),
        "padded_s": round(max(padded, 0) / FS, 4),
        "flat_leads": flat,
    }
    return x.astype(np.float16), meta
