"""PTB Diagnostic ECG Database (PTB-DB): 15 channels (12 standard leads + Frank vx, vy, vz), 1000 Hz, 30-120 s.

Report: the diagnostic fields of the header's clinical summary ("Reason for admission", infarction
localisation, additional diagnoses ...), skipping ``n/a``/``no``/``unknown`` values. Patient: the
``patientNNN`` folder a record sits in, when it does. Signals as found (canonicalisation crops to 10 s,
resamples to 500 Hz and ignores the Frank leads).
"""

from __future__ import annotations

from pathlib import Path

from ..records import EcgRecord
from .base import Source, join_statements, require_report
from .wfdb_io import comment_fields, discover_records, read_wfdb

REPORT_FIELDS = (
    "reason for admission",
    "acute infarction (localization)",
    "former infarction (localization)",
    "additional diagnoses",
    "ventriculography",
    "echocardiography",
)
_EMPTY = {"", "n/a", "no", "unknown", "none"}


def ptbdb_report(fields: dict[str, str]) -> str:
    """Report text from the clinical-summary fields of a PTB-DB header."""
    lines = [
        f"{key[:1].upper()}{key[1:]}: {fields[key]}"
        for key in REPORT_FIELDS
        if fields.get(key, "").strip().lower() not in _EMPTY
    ]
    return join_statements(lines)


class PtbdbSource(Source):
    """PTB-DB records found recursively under ``--root``. Options: ``min_words`` (default 1)."""

    name = "ptbdb"

    def __init__(self, root: str | Path, min_words: int | str = 1):
        super().__init__(root)
        self.min_words = int(min_words)

    def items(self) -> list[str]:
        return discover_records(self.root)

    def load(self, item: str) -> EcgRecord:
        path = self.root / item
        data = read_wfdb(path, physical=True)
        fields = comment_fields(data.comments)
        report = require_report(ptbdb_report(fields), f"{path}.hea", self.min_words)
        parent = Path(item).parent.name
        return self.record(
            data,
            record_id=item,
            file=f"{item}.hea",
            report=report,
            patient_id=parent if parent.startswith("patient") else None,
            labels={k: fields[k] for k in REPORT_FIELDS if k in fields},
            meta={"age": fields.get("age"), "sex": fields.get("sex")},
        )
