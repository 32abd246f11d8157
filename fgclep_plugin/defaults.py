"""Default paths and settings shared by the commands, the evaluation API and the demo (one copy of each).

Imports nothing from the package, so every layer may read it.
"""

from __future__ import annotations

DEFAULT_MODEL = "FGCLEP-ResNet1d18-MiniLM"  # the open_clip model config of the demo and the real-data recipe

# Where each data set lives unless a command is told otherwise (relative to the working directory).
SYNTH_DATA = "data/synth"  # the embedded synthetic corpus (train / val / test shards, generated on first use)
MERL_DATA = "shards/merl"  # MERL benchmark task shards (`fgclep eval build --out`)
LUDB_DATA = "shards/ludb"  # the shipped LUDB shards (train = records 1-150, test = 151-200)

# Shortest record (seconds) a conversion keeps, for training shards (`fgclep shards`) and benchmark shards
# (`fgclep eval build`) alike, so both are canonicalised the same way. 5 s: MERL's CPSC2018 tables list
# records from 6 s on (MERL reads their first 5 s), and a higher floor would silently drop benchmark rows.
# Records under 10 s are padded to 10 s and keep their length in the metadata (`seconds_original`,
# `padded_s`). The Python API (`ecgdata.ecg.canonicalize`) keeps its stricter 8 s default.
MIN_SECONDS = 5.0

# The choices of flags that the light command parsers offer, copied from the modules that act on them
# (`training.injection.INJECTIONS`, `augment.rules.RULES`): this module sits below both layers, and
# `training.injection` imports torch, which the `fgclep` parser must not load (start-up time).
# tests/test_cli.py pins each copy equal to its original.
INJECTIONS = ("append", "caption", "multi-positive")  # the training entry point's --ecg-feature-injection
AUGMENT_RULES = ("quantile", "within-proposer", "lead-ensemble", "centred", "cosine", "paper", "oracle")
