"""PhysioNet/CinC Challenge WFDB format: CPSC2018, Chapman-Shaoxing/Ningbo (CSN), Georgia, PTB-XL-HR, CODE-15.

Records (``.hea`` + ``.mat``/``.dat``) are discovered recursively under the root (Chapman nests them as
``WFDBRecords/01/010/``). The ``# Dx:`` / ``#Dx:`` SNOMED-CT codes are mapped to names through the packaged
table (:mod:`fgclep_plugin.ecgdata.sources.snomed`), and the report is built from the names in header order
("Atrial fibrillation. Left axis deviation."). Codes the table does not know stay in ``labels["snomed"]`` and
``labels["snomed_unmapped"]``. Other ``key: value`` comments (age, sex, patient id, Chagas label) go to
``meta``/``labels``. Records of any length and rate are returned as found; canonicalisation crops/resamples.
"""

from __future__ import annotations

from pathlib import Path

from ..records import EcgRecord, RejectError
from .base import Source, as_bool, as_floats, join_statements, require_report
from .snomed import load_names
from .wfdb_io import comment_fields, discover_records, read_header, read_wfdb

# Per-dataset defaults of the aliases: CODE-15 has no diagnosis text and is recorded at 400 Hz only.
ALIAS_DEFAULTS: dict[str, dict] = {
    "code15": {"require_report": False, "expected_fs": "400"},
}


def dx_codes(fields: dict[str, str]) -> list[str]:
    """SNOMED codes of the ``Dx`` comment, in order, without duplicates."""
    codes: list[str] = []
    for c in fields.get("dx", "").replace(";", ",").split(","):
        c = c.strip()
        if c and c not in codes:
            codes.append(c)
    return codes


def dx_report(names: list[str]) -> str:
    """Report text from diagnosis names: each a sentence, first letter capitalised."""
    return join_statements([n[:1].upper() + n[1:] for n in names])


def _as_bool_label(value: str) -> bool | str:
    v = value.strip().lower()
    return True if v == "true" else False if v == "false" else value


class ChallengeSource(Source):
    """PhysioNet Challenge-format WFDB records found recursively under ``--root``.

    Options: ``require_report`` (default true; false keeps records without ``Dx`` codes with an empty report,
    e.g. CODE-15), ``expected_fs`` (comma-separated rates; records at other rates are rejected as
    ``unexpected-fs``; default any; ``code15`` defaults to 400), ``snomed_table`` (CSV with ``code,name``;
    default the packaged table), ``min_words`` (default 1), ``dataset`` (name in the metadata; default the
    source name used, e.g. ``cpsc2018``).
    """

    name = "challenge"

    def __init__(
        self,
        root: str | Path,
        dataset: str = "challenge",
        require_report: bool | str = True,
        expected_fs: str | float | None = None,
        snomed_table: str | None = None,
        min_words: int | str = 1,
    ):
        super().__init__(root)
        self.name = dataset
        self.require_report = as_bool(require_report)
        self.expected_fs = as_floats(expected_fs) if expected_fs not in (None, "") else ()
        self.snomed_table = str(snomed_table) if snomed_table else None
        self.min_words = int(min_words)

    def items(self) -> list[str]:
        return discover_records(self.root)

    def load(self, item: str) -> EcgRecord:
        path = self.root / item
        where = f"{path}.hea"
        if self.expected_fs:
            fs = float(read_header(path).fs)
            if not any(abs(fs - f) < 1e-6 for f in self.expected_fs):
                raise RejectError(
                    "unexpected-fs",
                    f"{where}: sampling rate {fs:g} Hz, expected "
                    f"{', '.join(f'{f:g}' for f in self.expected_fs)} Hz for {self.name}",
                )
        data = read_wfdb(path, physical=True)
        fields = comment_fields(data.comments)
        codes = dx_codes(fields)
        table = load_names(self.snomed_table)
        names = [table[c] for c in codes if c in table]
        report = dx_report(names)
        if self.require_report:
            if not codes:
                raise RejectError("report-empty", f"{where}: no '# Dx:' codes")
            if not names:
                raise RejectError("report-empty", f"{where}: none of the Dx codes {codes} has a known name")
            report = require_report(report, where, self.min_words)
        labels: dict = {"snomed": codes, "dx_names": names}
        unmapped = [c for c in codes if c not in table]
        if unmapped:
            labels["snomed_unmapped"] = unmapped
        if "chagas label" in fields:
            labels["chagas"] = _as_bool_label(fields["chagas label"])
        meta = {
            key.replace(" ", "_"): fields[key]
            for key in ("age", "sex", "exam id")
            if key in fields and fields[key].lower() not in ("unknown", "nan", "")
        }
        return self.record(
            data,
            record_id=item,
            file=f"{item}.hea",
            report=report,
            patient_id=fields.get("patient id") or None,
            labels=labels,
            meta=meta,
        )
