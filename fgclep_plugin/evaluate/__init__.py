"""Evaluation: the MERL benchmark done right, plus the same protocol on the embedded data.

- :mod:`.tasks`: labelled tasks (PTB-XL super / sub / form / rhythm, CPSC2018 and CSN from the MERL tables,
  built from raw data with the project's converters; the synthetic test split; LUDB records 151-200).
- :mod:`.zeroshot`: zero-shot macro AUC with three prompt sets (templates, MERL's CKEPE strings, the paper's
  ENS lead ensemble), per-class AUC with positives, skipped classes and a bootstrap interval.
- :mod:`.linear`: the linear probe on cached frozen embeddings, selected on val (or MERL's max-test-AUC
  selection, labelled as such).
- :mod:`.retrieval`, :mod:`.figures`: text -> ECG / ECG -> report retrieval, t-SNE and similarity figures.
- :mod:`.results`: ``results.json`` + ``results.md`` over several checkpoints.
- :mod:`.api`: :class:`EvalSettings` and :func:`evaluate`, what ``fgclep eval`` and the demo call.
- :mod:`.cli`: ``fgclep eval build | tasks | zeroshot | linear | all``.

Every embedding goes through :mod:`fgclep_plugin.model.scoring`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EvalSettings", "evaluate"]


def __getattr__(name: str) -> Any:
    """``EvalSettings`` and ``evaluate`` from :mod:`.api`, imported on first use: the API imports torch and
    open_clip, and the ``fgclep`` command imports this package to build its parser (start-up time)."""
    if name in __all__:
        from . import api  # on first use: see the docstring

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
