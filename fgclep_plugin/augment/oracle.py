"""Oracle arms of stage 2: what stage 3 could gain with perfect decisions, on data whose truth is known.

Synthetic samples carry their ground truth in ``json``: ``labels.features`` (present waveform features) and
``synth.mentioned_features`` (those the report states). Three stage-2 outputs bound the method from above and
below; each is one ``fgclep augment`` command:

* perfect validation (``--rule oracle``): keep exactly the candidates whose feature is present;
* perfect features (``--rule oracle --candidates truth``): the candidates are every present feature the report
  does not state, in the vocabulary's canonical phrase, so all are kept;
* wrong features (``--move-kept SEED`` with any rule): each ECG's kept list is moved to another ECG of the same
  shard (a seeded derangement), so the text names features of some other ECG.

Data without ground truth is refused with :class:`NoGroundTruth`, naming the sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import knowledge
from .rules import unstated_truth


class NoGroundTruth(ValueError):
    """A sample without synthetic ground truth met an oracle arm."""


def _truth(meta: dict[str, Any], report: str, where: str) -> tuple[set[str], set[str]]:
    gt = unstated_truth(meta, report)
    if gt is None:
        raise NoGroundTruth(
            f"{where}: no ground truth (json labels.features and synth); the oracle arms (--rule oracle, "
            "--candidates truth) need synthetic data (fgclep synth)"
        )
    return gt


def candidate_truth(meta: dict[str, Any], report: str, candidates: Sequence[str], where: str) -> list[bool]:
    """Per candidate: is its feature present in the sample (False for candidates outside the vocabulary)."""
    present, _ = _truth(meta, report, where)
    return [knowledge.feature_of(c) in present for c in candidates]


def perfect_features(meta: dict[str, Any], report: str, where: str) -> list[str]:
    """Canonical phrases of every present feature the report does not state (sorted by feature name)."""
    present, stated = _truth(meta, report, where)
    return [knowledge.phrase(f) for f in sorted(present - stated)]


def derangement(n: int, rng: np.random.Generator) -> list[int]:
    """A random permutation without fixed points (Sattolo's algorithm: one cycle through all ``n``); ``n < 2``
    has none, and gets the identity."""
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(0, i))  # j < i: never swap an element with itself
        perm[i], perm[j] = perm[j], perm[i]
    return perm
