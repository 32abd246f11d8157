"""Where this process runs: its torch device and its part of the work.

Under ``torchrun`` / ``accelerate launch`` every process has ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in its
environment (open_clip reads the same variables): process ``RANK`` of ``WORLD_SIZE`` takes every
``WORLD_SIZE``-th shard from the ``RANK``-th on, and runs on GPU ``LOCAL_RANK`` of its machine. A plain run is
process 0 of 1 on GPU 0 (or the CPU).

torch is imported where a device is chosen, not at module import: the part of the work is plain environment
reading, wanted by modules that load no model (``fgclep eval``'s parser, candidate generation; start-up time).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

AUTO = "auto"
"""``--device`` value: CUDA device ``LOCAL_RANK`` when CUDA is available, else the CPU."""


def local_rank() -> int:
    """``LOCAL_RANK`` (0 outside a launcher): this process's GPU index on its machine."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def process_index() -> tuple[int, int]:
    """``(RANK, WORLD_SIZE)`` of this process ((0, 1) outside a launcher); ``ValueError`` when inconsistent."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK {rank} is not in [0, WORLD_SIZE {world})")
    return rank, world


def choose_device(requested: str | torch.device | None = AUTO) -> torch.device:
    """The device a command runs its model on: ``auto`` (or None) -> ``cuda:LOCAL_RANK`` when CUDA is available,
    else ``cpu``; ``cuda`` without an index -> ``cuda:LOCAL_RANK`` (one GPU per launched process); any other
    name as given."""
    import torch  # start-up time (module docstring)

    if requested is None or str(requested) == AUTO:
        return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank())
    return device


def process_part(items: Sequence[T], index: int | None = None, n: int | None = None) -> list[T]:
    """This process's part of ``items`` (shards, shard numbers): every ``n``-th from the ``index``-th; defaults
    from :func:`process_index`. Parts of all processes are disjoint and together hold every item."""
    if index is None or n is None:
        index, n = process_index()
    return list(items[index::n])
