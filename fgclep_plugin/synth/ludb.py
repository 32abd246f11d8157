"""Interval and amplitude measurements of LUDB's normal records from its cardiologists' annotations.

LUDB (Kalyakulina et al. 2020, ODC-By 1.0) annotates P, QRS and T onset/peak/offset in every lead
(annotation files ``.i, .ii, ... .v6``). A normal record here is ``Rhythms == "Sinus rhythm"`` with no entry in
any findings column of ``ludb.csv``. Global intervals per beat use the earliest onset and latest offset over
the 12 leads (the clinical convention); a record's value is the median over its beats.

Amplitudes: LUDB's stored digital samples share one scale across leads (they obey Einthoven's law there) while
the header gains normalise every lead to 1 mV peak-to-peak; signals are read by the LUDB converter
(:class:`fgclep_plugin.ecgdata.sources.ludb.LudbSource`, one common gain of 1000 units/mV).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .geometry import LEAD_NAMES

FINDING_COLUMNS = (
    "Conduction abnormalities",
    "Extrasystolies",
    "Hypertrophies",
    "Cardiac pacing",
    "Ischemia",
    "Non-specific repolarization abnormalities",
    "Other states",
)
_EXT = [n.lower() for n in LEAD_NAMES]


def normal_record_ids(root: str | Path) -> list[str]:
    """IDs of LUDB records in sinus rhythm with no other finding."""
    root = Path(root)
    path = root / "ludb.csv"
    if not path.exists():
        raise FileNotFoundError(f"LUDB table not found: {path}")
    ids = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["Rhythms"].strip() != "Sinus rhythm":
                continue
            if any((row.get(c) or "").strip() for c in FINDING_COLUMNS):
                continue
            ids.append(row["ID"].strip())
    return ids


def _waves(ann) -> dict[str, list[tuple[int, int, int]]]:
    """(onset, peak, offset) triples per wave symbol from one lead's annotation."""
    out: dict[str, list[tuple[int, int, int]]] = {"p": [], "N": [], "t": []}
    sym, smp = ann.symbol, ann.sample
    for k in range(1, len(sym) - 1):
        if sym[k] in out and sym[k - 1] == "(" and sym[k + 1] == ")":
            out[sym[k]].append((int(smp[k - 1]), int(smp[k]), int(smp[k + 1])))
    return out


def measure_record(root: str | Path, rec_id: str) -> dict:
    """Median global PR, QRS, QT (ms), HR (bpm) and median per-lead R/S/T amplitudes (mV) of one record."""
    import wfdb

    from ..ecgdata.sources.ludb import LudbSource

    base = str(Path(root) / "data" / rec_id)
    rec = LudbSource(root).load(rec_id)  # the converter's own reading: one common gain for all leads
    fs = float(rec.fs)
    names = [n.lower() for n in rec.lead_names]
    sig = rec.signal.T
    waves = {ext: _waves(wfdb.rdann(base, ext)) for ext in _EXT}
    ref = [pk for _, pk, _ in waves["ii"]["N"]]
    beats = []
    for pk in ref:  # group each lead's waves with the lead II QRS they belong to
        q_on, q_off, p_on, t_off = [], [], [], []
        for ext in _EXT:
            w = waves[ext]
            qs = [x for x in w["N"] if abs(x[1] - pk) < 0.08 * fs]
            if not qs:
                continue
            q = qs[0]
            q_on.append(q[0])
            q_off.append(q[2])
            p_on += [x[0] for x in w["p"] if 0 < q[0] - x[2] < 0.3 * fs]
            t_off += [x[2] for x in w["t"] if 0 < x[0] - q[2] < 0.45 * fs]
        if q_on:
            on = min(q_on)
            beats.append(
                (
                    on,
                    max(q_off) - on,
                    on - min(p_on) if p_on else np.nan,
                    max(t_off) - on if t_off else np.nan,
                )
            )
    b = np.array(beats, dtype=float)
    rr = np.diff(np.array(ref, dtype=float)) / fs
    amps = {}
    for ext in _EXT:
        lead = sig[:, names.index(ext)]
        r, s, t = [], [], []
        for on, pk, off in waves[ext]["N"]:
            base_v = lead[max(on - 5, 0) : on + 1].mean()
            seg = lead[on : off + 1] - base_v
            r.append(max(seg.max(), 0.0))
            s.append(min(seg.min(), 0.0))
        for on, pk, off in waves[ext]["t"]:
            t.append(lead[pk] - lead[max(on - 5, 0) : on + 1].mean())
        amps[ext] = (
            np.median(r) if r else np.nan,
            np.median(s) if s else np.nan,
            np.median(t) if t else np.nan,
        )
    ms = 1000.0 / fs
    return {
        "id": rec_id,
        "hr_bpm": float(60.0 / np.median(rr)) if len(rr) else np.nan,
        "qrs_ms": float(np.nanmedian(b[:, 1]) * ms),
        "pr_ms": float(np.nanmedian(b[:, 2]) * ms),
        "qt_ms": float(np.nanmedian(b[:, 3]) * ms),
        "r_mv": {n: float(amps[n.lower()][0]) for n in LEAD_NAMES},
        "s_mv": {n: float(amps[n.lower()][1]) for n in LEAD_NAMES},
        "t_mv": {n: float(amps[n.lower()][2]) for n in LEAD_NAMES},
    }


def measure_normals(root: str | Path) -> list[dict]:
    """Measurements of every normal LUDB record."""
    return [measure_record(root, i) for i in normal_record_ids(root)]
