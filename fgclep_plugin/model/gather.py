"""A shard set embedded by every process of a launcher (``torchrun`` / ``accelerate launch``): process ``r`` of
``n`` embeds its part of the shards (:func:`~.device.process_part`: shards ``r, r + n, ...``) on its own device,
the parts are gathered over a gloo process group (CPU objects; works beside NCCL training groups) and merged
back into shard order, so every process holds the whole set and computes the same results. Outside a launcher
it is :func:`~.scoring.embed_shards` itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..ecgdata.reader import expand_urls
from .device import process_index, process_part
from .scoring import EmbeddedShards, LoadedModel, embed_shards


def merge_parts(urls: str | Sequence[str], parts: Sequence[EmbeddedShards]) -> EmbeddedShards:
    """One :class:`EmbeddedShards` in shard order from the parts of processes ``0 .. n-1`` (process ``r``
    embedded shards ``r, r + n, ...``, each part with its ``shard_sizes``)."""
    n = len(parts)
    total = sum(len(p.shard_sizes or ()) for p in parts)
    rows: list[tuple[int, int]] = []  # (part, row in the part) of every sample, in shard order
    start = [0] * n
    for k in range(total):
        r = k % n
        size = parts[r].shard_sizes[k // n]
        rows += [(r, start[r] + i) for i in range(size)]
        start[r] += size
    if not rows:
        raise ValueError(f"no samples in {urls}")
    keep_texts = all(p.texts is not None for p in parts)
    return EmbeddedShards(
        urls,
        np.stack([parts[r].embeddings[i] for r, i in rows]),
        [parts[r].keys[i] for r, i in rows],
        [parts[r].texts[i] for r, i in rows] if keep_texts else None,
        [parts[r].metas[i] for r, i in rows],
        [parts[k % n].shard_sizes[k // n] for k in range(total)],
    )


def all_gather(part: EmbeddedShards) -> list[EmbeddedShards]:
    """Every process's part, in rank order (a gloo group from the launcher's environment if none is up)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, part)
    return parts


def embed_shards_gathered(
    loaded: LoadedModel,
    urls: str | Sequence[str],
    batch_size: int = 64,
    progress: bool | str = False,
    keep_meta: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> EmbeddedShards:
    """:func:`~.scoring.embed_shards` of ``urls`` split over the launcher's processes and gathered (module
    docstring); every process returns the whole set in shard order."""
    rank, world = process_index()
    if world == 1:
        return embed_shards(loaded, urls, batch_size, progress, keep_meta)
    mine = process_part(expand_urls(urls), rank, world)
    part = (
        embed_shards(loaded, mine, batch_size, progress, keep_meta)
        if mine
        else EmbeddedShards(mine, np.zeros((0, 0), np.float32), [], [], [], [])
    )
    return merge_parts(urls, all_gather(part))
