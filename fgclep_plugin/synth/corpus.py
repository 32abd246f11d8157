"""The embedded default corpus: synthetic train / val / test shards, generated on demand.

``ensure_synth_corpus()`` returns the shard URL pattern of every split, writing whatever is missing first
(the shard writer is resumable, so a complete corpus costs only a check) and rebuilding a split made with
another seed, size or generator version. Records are deterministic in (seed, split, index), so the same call
regenerates byte-identical shards on any machine. ``fgclep synth`` (``generate_corpus``) never deletes: it
refuses a folder holding a different corpus.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..defaults import SYNTH_DATA
from ..ecgdata.shards import exclusive_lock, write_shards
from .reports import DEFAULT_P_MENTION
from .source import SPLITS, SynthSource

DEFAULT_ROOT = SYNTH_DATA
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
    p_mention: float = DEFAULT_P_MENTION,
) -> dict[str, dict]:
    """Write (or complete) the shards of every split; returns the shard writer's summary per split.
    ``p_mention``: probability that a report states each present waveform feature."""
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    unknown = set(sizes) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown synthetic split(s) {sorted(unknown)}; expected {sorted(SPLITS)}")
    out = {}
    for split, n in sizes.items():
        if n <= 0:
            continue
        source = SynthSource(split=split, n=int(n), seed=seed, p_mention=p_mention)
        out[split] = write_shards(
            source, shard_pattern(root, split), maxcount, workers, progress=progress, log=log
        )
    return out


def existing_corpus_urls(root: str | Path) -> dict[str, str] | None:
    """Shard URL pattern per split of a corpus already written in ``root`` (every split's ``sizes.json``
    present), whatever its size, seed or mention rate; None when a split is missing or incomplete."""
    urls = {}
    for split in SPLITS:
        sizes = Path(root) / split / "sizes.json"
        if not sizes.is_file():
            return None
        n = len(json.loads(sizes.read_text()))
        if n == 0:
            return None
        urls[split] = str(Path(root) / split / f"synth-{split}-{{000000..{n - 1:06d}}}.tar")
    return urls


def _is_generated_split_dir(folder: Path, split: str) -> bool:
    """True if ``folder`` holds nothing but files this module writes for ``split``."""
    prefix = f"synth-{split}"
    for entry in folder.iterdir():
        name = entry.name
        ok = (
            name in ("sizes.json", ".fgclep-state")
            or (name.startswith(prefix) and name.endswith((".tar", ".rejects.jsonl")))
            or (name.startswith(f".{prefix}") and ".tmp-" in name)
        )
        if not ok:
            return False
    return True


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def ensure_synth_corpus(
    root: str | Path = DEFAULT_ROOT,
    sizes: dict[str, int] | None = None,
    seed: int = DEFAULT_SEED,
    workers: int = 1,
    maxcount: int = DEFAULT_MAXCOUNT,
    rebuild_stale: bool = True,
    p_mention: float = DEFAULT_P_MENTION,
) -> dict[str, str]:
    """Shard URL pattern (``.../synth-train-{000000..000007}.tar``) per split; generates missing shards first.

    A split folder holding a corpus of another seed, size, mention rate or generator version is a stale cache:
    with
    ``rebuild_stale`` it is deleted and regenerated (only if it holds nothing but generated files),
    otherwise RuntimeError.
    """
    import shutil

    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    urls = {}
    Path(root).mkdir(parents=True, exist_ok=True)
    for split, n in sizes.items():
        if n <= 0:
            continue
        # One caller per split at a time (two test sessions, a demo and a test ...): the check, the deletion
        # of a stale split and its regeneration happen under one lock, so nobody deletes what another writes.
        with exclusive_lock(
            Path(root) / f".synth-{split}.lock", f"the synthetic {split} split in {root}", _say
        ):
            try:
                summary = generate_corpus(root, {split: n}, seed, workers, maxcount, p_mention=p_mention)[
                    split
                ]
            except RuntimeError as e:
                folder = Path(root) / split
                stale = "different input" in str(e) and _is_generated_split_dir(folder, split)
                if not (rebuild_stale and stale):
                    raise
                shutil.rmtree(folder)
                summary = generate_corpus(root, {split: n}, seed, workers, maxcount, p_mention=p_mention)[
                    split
                ]
        urls[split] = summary["urls"]
    return urls
