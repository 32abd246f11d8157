"""A shard set embedded by every process of a launcher (``torchrun`` / ``accelerate launch``): process ``r`` of
``n`` embeds its part of the shards (:func:`~.device.process_part`: shards ``r, r + n, ...``) on its own device,
the parts are gathered over a gloo process group (CPU objects; works beside NCCL training groups) and merged
back into shard order, so every process holds the whole set and computes the same results. Outside a launcher
it is :func:`~.scoring.embed_shards` itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..ecgdata.reader import expand_urls
from .device import process_index, process_part
from .scoring import EmbeddedShards, LoadedModel, embed_shards, in_shard_order


def merge_parts(urls: str | Sequence[str], parts: Sequence[EmbeddedShards]) -> EmbeddedShards:
    """One :class:`EmbeddedShards` in shard order from the parts of processes ``0 .. n-1`` (process ``r``
    embedded shards ``r, r + n, ...``, each part with its ``shard_sizes``)."""
    n = len(parts)
    where = [  # (shard number, sample number) of every row of every part, parts in rank order
        (r + j * n, i)
        for r, p in enumerate(parts)
        for j, size in enumerate(p.shard_sizes or ())
        for i in range(size)
    ]
    if not where:
        raise ValueError(f"no samples in {urls}")
    full = [p for p in parts if p.keys]  # a process without shards holds a (0, 0) embedding array

    def joined(field: str) -> list[Any]:
        return [x for p in full for x in getattr(p, field)]

    return in_shard_order(
        urls,
        np.array(where),
        np.concatenate([p.embeddings for p in full]),
        joined("keys"),
        joined("texts") if all(p.texts is not None for p in parts) else None,
        joined("metas"),
        sum(len(p.shard_sizes or ()) for p in parts),
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
    loaded: LoadedModel, urls: str | Sequence[str], *args: Any, **kw: Any
) -> EmbeddedShards:
    """:func:`~.scoring.embed_shards` (the same arguments) of ``urls`` split over the launcher's processes and
    gathered (module docstring); every process returns the whole set in shard order."""
    rank, world = process_index()
    if world == 1:
        return embed_shards(loaded, urls, *args, **kw)
    mine = process_part(expand_urls(urls), rank, world)
    part = (
        embed_shards(loaded, mine, *args, **kw)
        if mine
        else EmbeddedShards(mine, np.zeros((0, 0), np.float32), [], [], [], [])
    )
    return merge_parts(urls, all_gather(part))
