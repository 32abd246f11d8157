"""The synthetic corpus as a shard-writer source: record ``i`` of a split is simulated from (seed, split, i)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ecgdata.records import EcgRecord
from .cases import ecg_class, simulate_case
from .geometry import LEAD_NAMES
from .reports import DEFAULT_P_MENTION, make_report
from .vocabulary import FEATURES

GENERATOR_VERSION = "synth-v5"  # bump when the simulator's output changes (it is part of every item)
SPLITS = {"train": 0, "val": 1, "test": 2}
FS = 500


@dataclass(frozen=True)
class SynthSource:
    """Picklable source of ``n`` simulated ECG-report pairs of one split; deterministic in ``seed``."""

    split: str = "train"
    n: int = 4000
    seed: int = 0
    name: str = "synth"
    p_mention: float = DEFAULT_P_MENTION

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"unknown synthetic split {self.split!r}; expected one of {sorted(SPLITS)}")
        if not 0.0 <= float(self.p_mention) <= 1.0:
            raise ValueError(f"p_mention must be in [0, 1], got {self.p_mention}")

    def items(self) -> list[tuple[str, int, str, int, float]]:
        """``(generator version, seed, split, index, p_mention)`` per record: seed and mention rate are part
        of the shard manifest, so a corpus of another mention rate is recognised as different."""
        p = float(self.p_mention)
        return [(GENERATOR_VERSION, self.seed, self.split, i, p) for i in range(self.n)]

    def load(self, item) -> EcgRecord:
        """Simulate one record (a bare index is accepted too)."""
        i = item[3] if isinstance(item, tuple) else int(item)
        return synth_record(self.seed, self.split, i, self.p_mention)


def synth_record(seed: int, split: str, index: int, p_mention: float = DEFAULT_P_MENTION) -> EcgRecord:
    """Record ``index`` of ``split``: signal [12, 5000] mV at 500 Hz, report (each present feature stated with
    ``p_mention``), labels, ground truth in meta."""
    case = simulate_case([seed, SPLITS[split], index], fs=FS)
    rng = np.random.default_rng([seed, SPLITS[split], index, 1])
    cls = ecg_class(case["diagnoses"])
    report, mentioned = make_report(case["diagnoses"], case["features"], cls, rng, p_mention=p_mention)
    truth = dict(case["truth"])
    record_id = f"{split}-s{seed}-{index:06d}"
    meta = {
        "synth": {
            "generator": GENERATOR_VERSION,
            "seed": seed,
            "split": split,
            "index": index,
            "ecg_class": cls,
            "diagnoses": case["diagnoses"],
            "features": [{"name": f, "phrase": FEATURES[f]["phrase"]} for f in case["features"]],
            "planned_features": case["planned"],
            "mentioned_features": mentioned,
            "p_mention": p_mention,
            "measurements": truth,
            "spec": case["spec"].to_dict(),
        }
    }
    return EcgRecord(
        source="synth",
        record_id=record_id,
        signal=case["signal"],
        fs=float(FS),
        lead_names=list(LEAD_NAMES),
        report=report,
        patient_id=f"synth-{record_id}",
        labels={"diagnoses": list(case["diagnoses"]), "features": list(case["features"])},
        meta=meta,
    )
