"""What every source shares: the base class, option parsing, report cleaning and the patient-level split."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..records import EcgRecord, RejectError

if TYPE_CHECKING:
    from .wfdb_io import WfdbData

SPLITS = ("train", "val", "test")


class Source:
    """A dataset as a list of cheap, picklable item refs (:meth:`items`) and a :meth:`load` per item.

    Subclasses keep only plain attributes; anything cached at run time lives in attributes whose names start
    with ``_cache`` and is dropped when the object is pickled (worker processes rebuild it lazily).
    """

    name = "source"

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.exists():
            raise FileNotFoundError(f"{self.name}: root {self.root} does not exist")

    def items(self) -> list:
        """Sorted, deterministic, picklable refs to the records (cheap: no waveform is read)."""
        raise NotImplementedError

    def load(self, item: Any) -> EcgRecord:
        """Read one record; raises :class:`RejectError` naming the file on bad input."""
        raise NotImplementedError

    def record(
        self,
        data: WfdbData,
        *,
        record_id: str,
        file: str,
        report: str,
        patient_id: str | None = None,
        labels: dict | None = None,
        meta: dict | None = None,
        signal: np.ndarray | None = None,
    ) -> EcgRecord:
        """The record of a WFDB read: rate and lead names as read, ``signal`` (default: as read) in mV.

        ``meta`` gains ``file`` (the header, relative to the dataset) and, when reading had to repair the
        header, ``header_fix``.
        """
        meta = {"file": file, **(meta or {})}
        if data.header_fix:
            meta["header_fix"] = data.header_fix
        return EcgRecord(
            source=self.name,
            record_id=record_id,
            signal=data.signal if signal is None else signal,
            fs=data.fs,
            lead_names=data.lead_names,
            report=report,
            patient_id=patient_id,
            labels=labels or {},
            meta=meta,
        )

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_cache")}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, root={str(self.root)!r})"


def as_bool(value: Any) -> bool:
    """Option value -> bool (``"true"/"1"/"yes"/"on"`` and their opposites, as given on a command line)."""
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("1", "true", "yes", "on", "y"):
        return True
    if s in ("0", "false", "no", "off", "n", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def as_floats(value: Any) -> tuple[float, ...]:
    """Option value -> tuple of floats (``"0.8,0.1,0.1"`` or a sequence)."""
    if isinstance(value, str):
        return tuple(float(v) for v in value.replace(";", ",").split(",") if v.strip())
    if isinstance(value, (int, float)):
        return (float(value),)
    return tuple(float(v) for v in value)


def as_strings(value: Any, sep: str = ",") -> list[str]:
    """Option value -> list of non-empty strings (a ``sep``-separated string or a sequence)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(sep) if v.strip()]
    return [str(v) for v in value]


def clean_line(text: str) -> str:
    """One report statement: whitespace collapsed, decoration (``---``, ``***``) and stray punctuation trimmed."""
    s = re.sub(r"\s+", " ", str(text)).strip()
    s = re.sub(r"^[-*=~#\s]+|[-*=~#\s]+$", "", s)
    return s.strip(" ,;")


def join_statements(lines: Sequence[str]) -> str:
    """Join statements into one report: each ends with a full stop, separated by a space."""
    out = []
    for line in lines:
        s = clean_line(line)
        if not s:
            continue
        out.append(s if s[-1] in ".!?" else s + ".")
    return " ".join(out)


def word_count(text: str) -> int:
    """Number of words (runs of letters or digits)."""
    return len(re.findall(r"[^\W_]+", text))


def require_report(report: str, where: str, min_words: int = 1) -> str:
    """Return ``report`` or raise ``report-empty`` / ``report-too-short`` naming ``where``."""
    if not report.strip():
        raise RejectError("report-empty", f"{where}: no report text")
    n = word_count(report)
    if n < min_words:
        raise RejectError("report-too-short", f"{where}: report {report!r} has {n} word(s) (< {min_words})")
    return report


def patient_split(
    patient_id: Any,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: str = "fgclep",
    names: Sequence[str] = SPLITS,
) -> str:
    """Deterministic split of a patient: ``sha256(seed:patient_id)`` mapped to [0, 1) against cumulative fractions.

    Every record of one patient lands in the same split, independent of row order, machine or run.
    """
    fractions = [float(f) for f in fractions]
    if len(fractions) != len(names) or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(
            f"split fractions {fractions} must be {len(names)} non-negative numbers summing to 1"
        )
    digest = hashlib.sha256(f"{seed}:{str(patient_id).strip()}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    acc = 0.0
    for name, frac in zip(names, fractions):
        acc += frac
        if u < acc:
            return name
    return names[-1]
