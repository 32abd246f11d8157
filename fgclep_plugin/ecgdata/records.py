"""The one record type every source yields, and the error that rejects a record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


class RejectError(ValueError):
    """A record that cannot be converted; ``reason`` is a short machine-readable tag, the message says why."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
        self.message = message


@dataclass
class EcgRecord:
    """A raw ECG as a source reads it, before canonicalisation.

    ``signal`` is ``[n_leads, n_samples]`` in millivolts at ``fs`` Hz, leads named by ``lead_names`` in the
    order found in the file (canonicalisation reorders them by name).
    """

    source: str  # dataset name, e.g. "ludb", "ptbxl", "mimic-iv-ecg"
    record_id: str  # unique within the source, stable across runs
    signal: np.ndarray
    fs: float
    lead_names: list[str]
    report: str
    patient_id: str | None = None
    labels: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """WebDataset ``__key__``: unique and stable; no dots (webdataset splits keys on the first dot)."""
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{self.source}_{self.record_id}")
        return safe


@dataclass
class CanonicalSample:
    """A sample that is already canonical (``[12, 5000]`` float16 at 500 Hz, e.g. read from a shard): the
    shard writer stores it as it is, without canonicalising again. Stage 2 rewrites shards this way."""

    key: str
    ecg: np.ndarray
    text: str
    meta: dict[str, Any] = field(default_factory=dict)
