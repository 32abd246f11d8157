"""LUDB (Lobachevsky University ECG Database): 200 12-lead 10 s records at 500 Hz, one per subject.

Report: the diagnoses in each header (the comment lines after ``<diagnoses>:``), joined in order. Labels: the
structured columns of ``ludb.csv`` (multi-line cells split into lists), matched by record ID.

ADC gain correction (the physics decision of this source). Every LUDB header gives each lead its own ADC gain
(e.g. 1716, 1206, 1229 adu/mV for I, II, III) and baseline, yet the stored integers obey Einthoven's law
(II = I + III, aVR + aVL + aVF = 0) exactly, to one adu, at one common scale. Checked on all 200 records: each
lead's header gain equals the peak-to-peak range of that lead's stored integers, and its baseline is the
lead's rounded mean: the header rescales every lead to exactly 1 mV peak-to-peak, a normalisation artefact that
carries no physical information. Converted with those gains, the leads break Einthoven's law by 10-80 %.

So this source reads the stored integers (``wfdb.rdrecord(..., physical=False)``) and, when the per-lead gains
differ, converts all leads with one common gain, ``adc_gain`` = 1000 adu/mV (1 uV per unit; the convention of
the 12-lead WFDB releases of PTB-XL and the PhysioNet Challenges). With it the median peak-to-peak amplitude is
1.4 mV in lead II and 2.5 mV in V4 over the 200 records (the largest lead: median 2.8 mV, 5-95 % 1.7-5.3 mV),
the typical adult ECG amplitudes and the same range as the other 12-lead databases here, while a mean of the
header gains would give every record its own arbitrary scale. The header baselines (rounded means) are not
subtracted: a constant offset per lead carries no ECG information and subtracting rounded means would break
the law by up to 1.5 adu. ``meta["adc_gain_correction"]`` keeps the original gains and baselines and the gain
used. ``correct_gain=false`` returns the header's per-lead physical values instead (for comparison only).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..records import EcgRecord, RejectError
from .base import Source, as_bool, join_statements, require_report
from .wfdb_io import comment_fields, discover_records, read_wfdb

LUDB_ADC_GAIN = 1000.0  # adu per mV: 1 uV per stored unit


def ludb_report(comments: list[str]) -> str:
    """The diagnoses of a LUDB header: the comment lines after ``<diagnoses>:``, as one report."""
    lines, in_dx = [], False
    for c in comments:
        s = c.strip()
        if s.lower().startswith("<diagnoses>"):
            in_dx = True
            continue
        if in_dx and not s.startswith("<"):
            lines.append(s)
    return join_statements(lines)


def read_ludb_table(path: Path) -> dict[str, dict[str, list[str]]]:
    """``ludb.csv`` as ID -> {column: [values]} (cells hold several values, one per line)."""
    table: dict[str, dict[str, list[str]]] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            rid = (row.get("ID") or "").strip()
            table[rid] = {
                k.strip(): [v.strip() for v in (val or "").splitlines() if v.strip()]
                for k, val in row.items()
                if k and k.strip() != "ID"
            }
    return table


class LudbSource(Source):
    """LUDB. ``--root``: the LUDB folder (with ``data/`` and ``ludb.csv``) or its ``data/`` folder.

    Options: ``correct_gain`` (default true: one common ADC gain for all leads, see the module doc),
    ``adc_gain`` (adu/mV used for the correction, default 1000), ``min_words`` (default 1).
    """

    name = "ludb"

    def __init__(
        self,
        root: str | Path,
        correct_gain: bool | str = True,
        adc_gain: float | str = LUDB_ADC_GAIN,
        min_words: int | str = 1,
    ):
        super().__init__(root)
        self.data_dir = self.root / "data" if (self.root / "data").is_dir() else self.root
        csv_path = next(
            (p for p in (self.root / "ludb.csv", self.data_dir.parent / "ludb.csv") if p.exists()), None
        )
        self.table_path = csv_path
        self.correct_gain = as_bool(correct_gain)
        self.adc_gain = float(adc_gain)
        self.min_words = int(min_words)
        if self.adc_gain <= 0:
            raise ValueError(f"adc_gain must be positive, not {adc_gain}")

    def items(self) -> list[str]:
        return discover_records(self.data_dir)

    def _table(self) -> dict[str, dict[str, list[str]]]:
        if getattr(self, "_cache_table", None) is None:
            self._cache_table = read_ludb_table(self.table_path) if self.table_path else {}
        return self._cache_table

    def load(self, item: str) -> EcgRecord:
        path = self.data_dir / item
        data = read_wfdb(path, physical=False)
        digital = data.signal.astype(np.float64)
        gains = np.asarray(data.adc_gain, dtype=np.float64)
        if digital.shape[0] != len(gains) or np.any(gains <= 0):
            raise RejectError("bad-header", f"{path}.hea: ADC gains {data.adc_gain}")
        digital[data.signal == -32768] = np.nan  # WFDB format-16 invalid sample
        meta: dict = {}
        if self.correct_gain and len(set(data.adc_gain)) > 1:
            signal = digital / self.adc_gain
            meta["adc_gain_correction"] = {
                "original_gains": data.adc_gain,
                "original_baselines": data.baseline,
                "gain_used": self.adc_gain,
                "baseline_used": 0,
            }
        else:
            signal = (digital - np.asarray(data.baseline, dtype=np.float64)[:, None]) / gains[:, None]
        where = f"{path}.hea"
        report = require_report(ludb_report(data.comments), where, self.min_words)
        fields = comment_fields(data.comments)
        rid = Path(item).name
        meta.update({"age": fields.get("<age>"), "sex": fields.get("<sex>")})
        return self.record(
            data,
            record_id=rid,
            file=f"{item}.hea",
            report=report,
            patient_id=rid,  # LUDB: 200 records from 200 subjects
            labels=self._table().get(rid, {}),
            meta=meta,
            signal=signal,
        )
