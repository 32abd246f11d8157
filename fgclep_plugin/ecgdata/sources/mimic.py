"""MIMIC-IV-ECG: ``record_list.csv`` (subject_id, study_id, path) + ``machine_measurements.csv`` (``report_0`` ..
``report_17``), waveforms at ``files/pNNNN/pSUBJECT/sSTUDY/STUDY``.

Report: the non-empty ``report_*`` statements in column order, each cleaned and ended with a full stop. The
paper's filters, explicit and configurable:

- ``report-empty``: no statement at all;
- ``report-uninformative``: every statement matches one of ``UNINFORMATIVE`` (e.g. only
  "--- Suspect arm lead reversal" or "*** unreliable ..."); such statements are also dropped from reports that
  do say something (``drop_uninformative``; listed in ``meta["report_dropped"]``);
- ``report-too-short``: fewer than ``min_words`` (3) words left.

Leads are kept as found: MIMIC stores I, II, III, aVR, **aVF, aVL**, V1-V6, and canonicalisation maps by name.
Split by patient, never by row: ``split=train|val|test`` keeps only the studies whose ``subject_id`` hashes into
that split (:func:`fgclep_plugin.ecgdata.sources.base.patient_split`), so all studies of one subject share a split.
"""

from __future__ import annotations

import csv
import re
import sys
from functools import lru_cache
from pathlib import Path

from ..records import EcgRecord, RejectError
from .base import (
    SPLITS,
    Source,
    as_bool,
    as_floats,
    as_strings,
    clean_line,
    join_statements,
    patient_split,
    word_count,
)
from .wfdb_io import read_wfdb

N_REPORT_COLUMNS = 18
UNINFORMATIVE: tuple[str, ...] = (
    r"^suspect (arm|limb) leads? reversal",
    r"unreliable",
    r"^(technically (unsatisfactory|poor|limited|difficult)|poor (data )?quality|data quality)",
    r"^warning\b",
    r"leads?\(?s?\)? (unsuitable|not suitable) for analysis",
    r"^(analysis error|no further analysis|interpretation (not possible|unavailable))",
    r"^age not entered",
    r"^(missing|noisy|artifact in) leads?\b",
)
MEASUREMENT_COLUMNS = (
    "rr_interval",
    "p_onset",
    "p_end",
    "qrs_onset",
    "qrs_end",
    "t_end",
    "p_axis",
    "qrs_axis",
    "t_axis",
    "bandwidth",
    "filtering",
    "cart_id",
    "ecg_time",
)


def report_statements(row: dict[str, str]) -> list[str]:
    """The non-empty ``report_0`` .. ``report_17`` cells of a row, cleaned, in column order."""
    out = []
    for i in range(N_REPORT_COLUMNS):
        s = clean_line(row.get(f"report_{i}") or "")
        if s:
            out.append(s)
    return out


def compile_patterns(patterns: str | list[str] | tuple[str, ...] | None) -> list[re.Pattern]:
    """Patterns from a list, a file (one regex per line, ``#`` comments) or a ``||``-separated string."""
    if patterns is None:
        patterns = UNINFORMATIVE
    if isinstance(patterns, str):
        p = Path(patterns)
        if p.is_file():
            lines = p.read_text(encoding="utf-8").splitlines()
            patterns = [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]
        else:
            patterns = as_strings(patterns, sep="||")
    return [re.compile(p, re.IGNORECASE) for p in patterns]


def filter_report(
    statements: list[str],
    patterns: list[re.Pattern],
    min_words: int,
    where: str,
    drop_uninformative: bool = True,
) -> tuple[str, list[str]]:
    """Apply the paper's report filters; returns (report, dropped statements) or raises RejectError."""
    if not statements:
        raise RejectError("report-empty", f"{where}: all report_* columns are empty")
    useless = [s for s in statements if any(p.search(s) for p in patterns)]
    useful = [s for s in statements if s not in useless]
    if not useful:
        raise RejectError("report-uninformative", f"{where}: only uninformative statements {useless}")
    report = join_statements(useful if drop_uninformative else statements)
    n = word_count(join_statements(useful))
    if n < min_words:
        raise RejectError("report-too-short", f"{where}: report {report!r} has {n} word(s) (< {min_words})")
    return report, useless if drop_uninformative else []


@lru_cache(maxsize=2)
def read_measurements(path: str, mtime_ns: int = 0, size: int = 0) -> dict[str, tuple[tuple[str, ...], ...]]:
    """``machine_measurements.csv`` as study_id -> (report statements, MEASUREMENT_COLUMNS values).

    Cached per process by (path, mtime, size): the shard writer sends every worker a fresh copy of the source
    for each shard, and re-parsing the ~800 k-row table per shard would cost more than converting the shard.
    """
    table = {}
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            table[r["study_id"].strip()] = (  # interned: machine statements repeat across studies
                tuple(sys.intern(x) for x in report_statements(r)),
                tuple(sys.intern(r.get(k) or "") for k in MEASUREMENT_COLUMNS),
            )
    return table


class MimicSource(Source):
    """MIMIC-IV-ECG. ``--root``: the folder with ``record_list.csv``, ``machine_measurements.csv`` and ``files/``.

    Options: ``split`` (``train``/``val``/``test``/``all``, default all), ``split_fractions`` (default
    ``0.8,0.1,0.1``), ``split_seed`` (default ``fgclep``), ``min_words`` (default 3), ``uninformative``
    (regexes, ``||``-separated, or a file with one per line; default :data:`UNINFORMATIVE`),
    ``drop_uninformative`` (default true).
    """

    name = "mimic-iv-ecg"

    def __init__(
        self,
        root: str | Path,
        split: str = "all",
        split_fractions: str | tuple = (0.8, 0.1, 0.1),
        split_seed: str = "fgclep",
        min_words: int | str = 3,
        uninformative: str | list | None = None,
        drop_uninformative: bool | str = True,
    ):
        super().__init__(root)
        if split not in (*SPLITS, "all"):
            raise ValueError(f"mimic: split must be one of {SPLITS} or 'all', not {split!r}")
        self.split = split
        self.split_fractions = as_floats(split_fractions)
        self.split_seed = str(split_seed)
        patient_split("0", self.split_fractions, self.split_seed)  # validates the fractions early
        self.min_words = int(min_words)
        self.uninformative = uninformative
        self.patterns = [p.pattern for p in compile_patterns(uninformative)]
        self.drop_uninformative = as_bool(drop_uninformative)
        for fname in ("record_list.csv", "machine_measurements.csv"):
            if not (self.root / fname).exists():
                raise FileNotFoundError(f"mimic: {self.root / fname} not found")

    def split_of(self, subject_id: str) -> str:
        """The split of a subject under this source's fractions and seed."""
        return patient_split(subject_id, self.split_fractions, self.split_seed)

    def items(self) -> list[tuple[str, str, str]]:
        """(subject_id, study_id, path) of every record in ``record_list.csv`` (in the chosen split), by path."""
        out = []
        with open(self.root / "record_list.csv", newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                subject, study, path = row["subject_id"].strip(), row["study_id"].strip(), row["path"].strip()
                if self.split == "all" or self.split_of(subject) == self.split:
                    out.append((subject, study, path))
        return sorted(out, key=lambda t: t[2])

    def _measurements(self) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
        """study_id -> (cleaned report statements, values of MEASUREMENT_COLUMNS); compact: ~800 k rows."""
        if getattr(self, "_cache_measurements", None) is None:
            path = self.root / "machine_measurements.csv"
            st = path.stat()
            self._cache_measurements = read_measurements(str(path), st.st_mtime_ns, st.st_size)
        return self._cache_measurements

    def load(self, item: tuple[str, str, str]) -> EcgRecord:
        subject, study, rel = item
        path = self.root / rel
        where = f"{path}.hea (study {study})"
        row = self._measurements().get(study)
        if row is None:
            raise RejectError("report-missing", f"{where}: study {study} not in machine_measurements.csv")
        statements, measurements = row
        patterns = [re.compile(p, re.IGNORECASE) for p in self.patterns]
        report, dropped = filter_report(
            list(statements), patterns, self.min_words, where, self.drop_uninformative
        )
        data = read_wfdb(path, physical=True)
        meta: dict = {"study_id": study, "split": self.split_of(subject)}
        if dropped:
            meta["report_dropped"] = dropped
        meta["machine_measurements"] = {k: v for k, v in zip(MEASUREMENT_COLUMNS, measurements) if v}
        return self.record(
            data, record_id=study, file=f"{rel}.hea", report=report, patient_id=subject, meta=meta
        )
