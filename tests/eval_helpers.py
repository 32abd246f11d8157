"""Shared pieces of the evaluation tests: a small saved checkpoint and labelled embeddings with known signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fgclep_plugin.evaluate.zeroshot import EmbeddedSplit

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
BENCHMARKS = SHARED / "benchmarks"
LUDB_SHARDS = ROOT / "shards" / "ludb"
LUDB_TEST = str(LUDB_SHARDS / "ludb-test-000000.tar")
MODEL = "FGCLEP-Tiny"


def tiny_checkpoint(path: Path, seed: int = 0, epoch: int | None = None) -> str:
    """FGCLEP-Tiny with seeded random weights, saved as a state dict (loads with ``weights_only=True``); with
    ``epoch``, as open_clip's training checkpoint ``{"epoch": epoch, "state_dict": ...}``."""
    import open_clip

    from fgclep_plugin.model.registry import register

    register()
    torch.manual_seed(seed)
    model = open_clip.create_model(MODEL)
    state = model.state_dict()
    torch.save(state if epoch is None else {"epoch": epoch, "state_dict": state}, path)
    return str(path)


def clustered_split(
    n: int, classes: int = 3, dim: int = 16, seed: int = 0, signal: float = 1.0
) -> EmbeddedSplit:
    """Multi-label embeddings: class ``c`` present with probability 0.3 adds ``signal`` along axis ``c``."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, classes)) < 0.3).astype(np.int64)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    x[:, :classes] += signal * targets
    names = tuple(f"c{i}" for i in range(classes))
    return EmbeddedSplit(x, targets, [f"k{i}" for i in range(n)], names)
