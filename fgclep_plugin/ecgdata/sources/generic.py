"""Any folder of WFDB records plus a CSV that maps each record to its report.

The CSV (``reports``, default ``reports.csv`` in the root) has one row per record: the record path relative to
the root without extension (``record_column``, default ``record``), the report (``report_column``, default
``report``), optionally a patient id (``patient_column``, default ``patient_id``) and any other columns, which
become labels. Every CSV row is an item; a row whose record is missing or unreadable is rejected naming the file.
Suits PTB-DB-like (15 channels, 1000 Hz) and CODE-15-like (400 Hz, 3-10 s) records: leads are matched by name
at canonicalisation and extra channels (``vx vy vz``) are ignored there.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ..records import EcgRecord, RejectError
from .base import Source, as_strings, clean_line, require_report
from .wfdb_io import read_wfdb


class GenericSource(Source):
    """WFDB records under ``--root`` with reports from a CSV.

    Options: ``reports`` (CSV path, relative to the root or absolute; default ``reports.csv``),
    ``record_column`` (default ``record``), ``report_column`` (default ``report``), ``patient_column`` (default
    ``patient_id``, optional in the CSV), ``label_columns`` (comma-separated; default every other column),
    ``min_words`` (default 1), ``dataset`` (dataset name in the metadata, default ``generic``).
    """

    name = "generic"

    def __init__(
        self,
        root: str | Path,
        reports: str = "reports.csv",
        record_column: str = "record",
        report_column: str = "report",
        patient_column: str = "patient_id",
        label_columns: str | list[str] | None = None,
        min_words: int | str = 1,
        dataset: str = "generic",
    ):
        super().__init__(root)
        self.name = dataset
        path = Path(reports)
        self.reports = path if path.is_absolute() else self.root / path
        if not self.reports.exists():
            raise FileNotFoundError(f"generic: report table {self.reports} not found")
        self.record_column, self.report_column, self.patient_column = (
            record_column,
            report_column,
            patient_column,
        )
        self.label_columns = as_strings(label_columns) if label_columns else None
        self.min_words = int(min_words)
        header = self._header()
        for col in (record_column, report_column, *(self.label_columns or [])):
            if col not in header:
                raise ValueError(f"generic: column {col!r} not in {self.reports} (columns: {header})")

    def _header(self) -> list[str]:
        with open(self.reports, newline="", encoding="utf-8-sig") as f:
            return [c.strip() for c in next(csv.reader(f), [])]

    def _rows(self) -> dict[str, dict[str, str]]:
        if getattr(self, "_cache_rows", None) is None:
            rows: dict[str, dict[str, str]] = {}
            with open(self.reports, newline="", encoding="utf-8-sig") as f:
                for row in csv.DictReader(f):
                    row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
                    rec = row[self.record_column].removesuffix(".hea").strip("/")
                    if rec in rows:
                        raise ValueError(f"generic: record {rec!r} appears twice in {self.reports}")
                    rows[rec] = row
            self._cache_rows = rows
        return self._cache_rows

    def items(self) -> list[str]:
        return sorted(self._rows())

    def load(self, item: str) -> EcgRecord:
        row = self._rows()[item]
        path = self.root / item
        where = f"{path}.hea"
        if not Path(where).exists():
            raise RejectError("missing-file", f"{where} not found (row of {self.reports.name})")
        report = require_report(clean_line(row.get(self.report_column, "")), where, self.min_words)
        data = read_wfdb(path, physical=True)
        skip = {self.record_column, self.report_column, self.patient_column}
        cols = self.label_columns if self.label_columns is not None else [c for c in row if c not in skip]
        return self.record(
            data,
            record_id=item,
            file=f"{item}.hea",
            report=report,
            patient_id=row.get(self.patient_column) or None,
            labels={c: row.get(c, "") for c in cols},
        )
