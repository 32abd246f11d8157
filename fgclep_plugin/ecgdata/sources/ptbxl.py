"""PTB-XL: ``ptbxl_database.csv`` (free-text ``report``, ``scp_codes``, ``strat_fold``, waveform file names) plus
``scp_statements.csv``; waveforms from ``records100`` (100 Hz) or ``records500`` (500 Hz).

Every row of the database is an item: a row whose waveform is missing is rejected (``missing-file``) naming the
file, so every input ends in the shards or the rejects list. ``scp_codes`` is a Python-dict literal, parsed with
``ast.literal_eval`` (never ``eval``). A waveform is looked up at the database's path
(``records100/00000/00001_lr``) and, failing that, directly under the records folder (``records100/00001_lr``),
the layout of partial copies.
"""

from __future__ import annotations

import ast
import csv
from pathlib import Path

from ..records import EcgRecord, RejectError
from .base import Source, clean_line, require_report
from .wfdb_io import read_wfdb

_RATES = {"100": "filename_lr", "500": "filename_hr", "lr": "filename_lr", "hr": "filename_hr"}


def parse_scp_codes(text: str, where: str = "") -> dict[str, float]:
    """``"{'NORM': 100.0, 'SR': 0.0}"`` -> dict, by ``ast.literal_eval``; RejectError if it is not a dict."""
    if not text or not text.strip():
        return {}
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise RejectError(
            "bad-labels", f"{where}: scp_codes {text[:80]!r} is not a literal ({exc})"
        ) from None
    if not isinstance(value, dict):
        raise RejectError("bad-labels", f"{where}: scp_codes {text[:80]!r} is not a dict")
    try:
        return {str(k): float(v) for k, v in value.items()}
    except (TypeError, ValueError):
        raise RejectError(
            "bad-labels", f"{where}: scp_codes {text[:80]!r} has a non-numeric likelihood"
        ) from None


def find_database(root: Path, database: str) -> Path:
    """``root/database`` or, failing that, the first ``ptbxl_database*.csv`` under ``root`` (sorted)."""
    path = Path(database) if Path(database).is_absolute() else root / database
    if path.exists():
        return path
    candidates = sorted(root.glob("ptbxl_database*.csv"))
    if not candidates:
        raise FileNotFoundError(f"ptbxl: neither {path} nor any ptbxl_database*.csv in {root}")
    return candidates[0]


class PtbxlSource(Source):
    """PTB-XL. ``--root``: the PTB-XL folder.

    Options: ``database`` (default ``ptbxl_database.csv``, else any ``ptbxl_database*.csv``), ``rate`` (100 or
    500, default 500: ``records100``/``records500``), ``min_words`` (default 1).
    Labels: ``scp_codes`` (the list of codes; their likelihoods in ``meta["scp_likelihoods"]``),
    ``diagnostic_superclass``/``diagnostic_subclass`` from ``scp_statements.csv``
    when present, ``strat_fold``.
    """

    name = "ptbxl"

    def __init__(
        self,
        root: str | Path,
        database: str = "ptbxl_database.csv",
        rate: int | str = 500,
        min_words: int | str = 1,
    ):
        super().__init__(root)
        if str(rate) not in _RATES:
            raise ValueError(f"ptbxl: rate must be 100 or 500, not {rate!r}")
        self.column = _RATES[str(rate)]
        self.database = find_database(self.root, database)
        self.min_words = int(min_words)

    def _rows(self) -> dict[str, dict[str, str]]:
        if getattr(self, "_cache_rows", None) is None:
            with open(self.database, newline="", encoding="utf-8") as f:
                self._cache_rows = {str(int(float(r["ecg_id"]))): r for r in csv.DictReader(f)}
        return self._cache_rows

    def _statements(self) -> dict[str, dict[str, str]]:
        if getattr(self, "_cache_statements", None) is None:
            path = self.root / "scp_statements.csv"
            table: dict[str, dict[str, str]] = {}
            if path.exists():
                with open(path, newline="", encoding="utf-8") as f:
                    for r in csv.DictReader(f):
                        table[(r.get("") or r.get("Unnamed: 0") or "").strip()] = r
            self._cache_statements = table
        return self._cache_statements

    def items(self) -> list[str]:
        return sorted(self._rows(), key=int)

    def _waveform(self, rel: str) -> Path:
        path = self.root / rel
        if Path(f"{path}.hea").exists():
            return path
        flat = self.root / Path(rel).parts[0] / Path(rel).name
        return flat if Path(f"{flat}.hea").exists() else path

    def load(self, item: str) -> EcgRecord:
        row = self._rows()[item]
        where = f"{self.database.name} ecg_id {item}"
        rel = (row.get(self.column) or "").strip()
        if not rel:
            raise RejectError("missing-file", f"{where}: no {self.column}")
        path = self._waveform(rel)
        if not Path(f"{path}.hea").exists():
            raise RejectError("missing-file", f"{path}.hea not found ({where})")
        report = require_report(clean_line(row.get("report") or ""), f"{path}.hea ({where})", self.min_words)
        codes = parse_scp_codes(row.get("scp_codes") or "", where)
        data = read_wfdb(path, physical=True)
        stmts = self._statements()
        # every code listed is present (rhythm and form codes carry likelihood 0.0): stored as a list, so the
        # label reads the same everywhere; the likelihoods stay in meta
        labels: dict = {"scp_codes": list(codes)}
        if stmts:
            for col in ("diagnostic_class", "diagnostic_subclass"):
                vals = sorted({stmts[c][col] for c in codes if c in stmts and stmts[c].get(col)})
                labels[col.replace("class", "superclass") if col == "diagnostic_class" else col] = vals
        fold = (row.get("strat_fold") or "").strip()
        if fold:
            labels["strat_fold"] = int(float(fold))
        patient = row.get("patient_id") or None
        return self.record(
            data,
            record_id=item,
            file=f"{Path(path).relative_to(self.root).as_posix()}.hea",
            report=report,
            patient_id=str(int(float(patient))) if patient else None,
            labels=labels,
            meta={"age": row.get("age") or None, "sex": row.get("sex") or None, "scp_likelihoods": codes},
        )
