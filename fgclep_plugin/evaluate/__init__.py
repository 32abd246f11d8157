"""Evaluation: the MERL benchmark done right, plus the same protocol on the embedded data.

- :mod:`.tasks`: labelled tasks (PTB-XL super / sub / form / rhythm, CPSC2018 and CSN from the MERL tables,
  built from raw data with the project's converters; the synthetic test split; LUDB records 151-200).
- :mod:`.zeroshot`: zero-shot macro AUC with three prompt sets (templates, MERL's CKEPE strings, the paper's
  ENS lead ensemble), per-class AUC with positives, skipped classes and a bootstrap interval.
- :mod:`.linear`: the linear probe on cached frozen embeddings, selected on val (or MERL's max-test-AUC
  selection, labelled as such).
- :mod:`.retrieval`, :mod:`.figures`: text -> ECG / ECG -> report retrieval, t-SNE and similarity figures.
- :mod:`.results`: ``results.json`` + ``results.md`` over several checkpoints.
- :mod:`.cli`: ``fgclep eval build | tasks | zeroshot | linear | all``.

Every embedding goes through :mod:`fgclep_plugin.model.scoring`.
"""
