"""Fixtures shared by several test files."""

from __future__ import annotations

import warnings

import pytest


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    """A fixed FGCLEP-Tiny state dict (seed 0): every run in a test file scores with the same weights."""
    import torch

    from fgclep_plugin.model.scoring import load_model

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = load_model("FGCLEP-Tiny")
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(lm.model.state_dict(), path)
    return str(path)


@pytest.fixture
def embed_counter(monkeypatch):
    """Counts the passes through ``embed_ecgs`` (as the evaluation calls it) and the ECGs they embed."""
    from fgclep_plugin.evaluate import zeroshot
    from fgclep_plugin.model import scoring

    calls: list[int] = []
    real = scoring.embed_ecgs

    def counting(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(len(out))
        return out

    monkeypatch.setattr(scoring, "embed_ecgs", counting)
    zeroshot.clear_memo()
    yield calls
    zeroshot.clear_memo()
