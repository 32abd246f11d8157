"""The embedded default corpus: synthetic train / val / test shards, generated on demand.

``ensure_synth_corpus()`` returns the shard URL pattern of every split, writing whatever is missing first
(the shard writer is resumable, so a complete corpus costs only a check). Records are deterministic in
(seed, split, index), so the same call regenerates byte-identical shards on any machine.
"""

from __future__ import annotations

from pathlib import Path

from ..shards import write_shards
from .source import SPLITS, SynthSource

DEFAULT_ROOT = "data/synth"
DEFAULT_SIZES = {"train": 4000, "val": 500, "test": 500}
DEFAULT_SEED = 0
DEFAULT_MAXCOUNT = 500


def shard_pattern(root: str | Path, split: str) -> str:
    """``ROOT/SPLIT/synth-SPLIT-%06d.tar``."""
    return str(Path(root) / split / f"synth-{split}-%06d.tar")


def generate_corpus(
    root: str | Path = DEFAULT_ROOT,
    sizes: dict[str, int] | None = None,
    seed: int = DEFAULT_SEED,
    workers: int = 1,
    maxcount: int = DEFAULT_MAXCOUNT,
    progress: bool = False,
    log=None,
) -> dict[str, dict]:
    """Write (or complete) the shards of every split; returns the shard writer's summary per split."""
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    unknown = set(sizes) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown synthetic split(s) {sorted(unknown)}; expected {sorted(SPLITS)}")
    out = {}
    for split, n in sizes.items():
        if n <= 0:
            continue
        source = SynthSource(split=split, n=int(n), seed=seed)
        out[split] = write_shards(source, shard_pattern(root, split), maxcount, workers, progress=progress, log=log)
    return out


def ensure_synth_corpus(
    root: str | Path = DEFAULT_ROOT,
    sizes: dict[str, int] | None = None,
    seed: int = DEFAULT_SEED,
    workers: int = 1,
    maxcount: int = DEFAULT_MAXCOUNT,
) -> dict[str, str]:
    """Shard URL pattern (``.../synth-train-{000000..000007}.tar``) per split; generates missing shards first.

    Raises RuntimeError if ``root`` holds a corpus made with another seed, size or generator version.
    """
    summaries = generate_corpus(root, sizes, seed, workers, maxcount, progress=False, log=None)
    return {split: s["urls"] for split, s in summaries.items()}
