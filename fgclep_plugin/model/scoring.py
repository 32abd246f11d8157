"""Embedding ECGs and texts, and scoring (ECG, text) pairs: the one path zero-shot, stage-2 validation,
retrieval and the linear probe share.

An FGCLEP model is an open_clip ``CustomTextCLIP`` with the ECG tower as its ``visual``; a pair's score is the
cosine of the two normalised embeddings and, with the model's SigLIP head, its sigmoid probability
``sigmoid(exp(logit_scale) * cos + logit_bias)`` (what the model was trained to output for a matching pair).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm


@dataclass
class LoadedModel:
    """A model ready for scoring: the module (eval mode), its val transform and tokenizer, and where it came
    from."""

    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Callable
    name: str
    checkpoint: str | None
    device: torch.device

    @property
    def logit_scale(self) -> float:
        """``exp(logit_scale)``: the temperature ``t`` of the SigLIP head."""
        return float(self.model.logit_scale.detach().exp())

    @property
    def logit_bias(self) -> float:
        """The SigLIP bias ``b`` (0 for a model without one)."""
        bias = getattr(self.model, "logit_bias", None)
        return 0.0 if bias is None else float(bias.detach())


def load_model(name: str, checkpoint: str | None = None, device: str = "cpu") -> LoadedModel:
    """Build model ``name`` through open_clip and load ``checkpoint`` (an open_clip training checkpoint or a
    state dict; read with ``weights_only=True``). Raises ``FileNotFoundError`` naming a missing checkpoint."""
    import open_clip

    from ..training.hooks import register

    register()
    if checkpoint is not None:
        from pathlib import Path

        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint {checkpoint} not found")
    model, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=checkpoint, device=device, weights_only=True
    )
    model.eval()
    return LoadedModel(
        model, preprocess, open_clip.get_tokenizer(name), name, checkpoint, torch.device(device)
    )


@torch.no_grad()
def _encode_all(
    encode: Callable[[Any], torch.Tensor],
    model: torch.nn.Module,
    chunks: Iterable[Any],
    autocast: Callable[[], Any],
    bar: tqdm,
) -> torch.Tensor:
    """``encode`` every chunk in eval mode under ``autocast`` (training mode restored after); float32 on CPU."""
    was_training = model.training
    model.eval()
    feats = []
    try:
        with autocast():
            for chunk in chunks:
                feats.append(encode(chunk).float().cpu())
                bar.update(len(chunk))
    finally:
        bar.close()
        model.train(was_training)
    return torch.cat(feats) if feats else torch.zeros(0, 0)


def _bar(progress: bool | str, total: int | None, unit: str) -> tqdm:
    return tqdm(
        total=total, unit=unit, desc=progress if isinstance(progress, str) else unit, disable=not progress
    )


def embed_ecgs(
    model: torch.nn.Module,
    batches: Iterable[torch.Tensor],
    device: str | torch.device = "cpu",
    autocast: Callable[[], Any] = nullcontext,
    input_dtype: torch.dtype | None = None,
    progress: bool | str = False,
    total: int | None = None,
) -> torch.Tensor:
    """L2-normalised ECG embeddings ``[N, D]`` (float32, CPU) of already transformed ECG batches
    ``[B, leads, L]``; the model is put in eval mode for the pass and restored after."""

    def encode(ecg: torch.Tensor) -> torch.Tensor:
        return model.encode_image(ecg.to(device=device, dtype=input_dtype or torch.float32), normalize=True)

    return _encode_all(encode, model, batches, autocast, _bar(progress, total, "ecg"))


def trim_padding(tokens: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """``tokens [B, context]`` without the trailing columns that are padding in every row, where the text
    tower masks padding (Hugging Face towers: the same embeddings, up to float rounding); else unchanged."""
    from open_clip.hf_model import HFTextEncoder

    text = getattr(model, "text", None)
    pad = getattr(getattr(text, "config", None), "pad_token_id", None)
    if not isinstance(text, HFTextEncoder) or pad is None or tokens.ndim != 2 or tokens.shape[1] == 0:
        return tokens
    used = (tokens != pad).any(dim=0).nonzero()
    return tokens[:, : int(used.max()) + 1 if len(used) else 1]


def embed_texts(
    model: torch.nn.Module,
    tokenizer: Callable,
    texts: Sequence[str],
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    autocast: Callable[[], Any] = nullcontext,
    progress: bool | str = False,
) -> torch.Tensor:
    """L2-normalised text embeddings ``[len(texts), D]`` (float32, CPU). Each distinct text is encoded once
    (repeats share its row), in batches of ``batch_size`` of similar length, trimmed of common padding."""
    unique = sorted(dict.fromkeys(texts), key=len)
    chunks = [unique[i : i + batch_size] for i in range(0, len(unique), batch_size)]

    def encode(chunk: list[str]) -> torch.Tensor:
        return model.encode_text(trim_padding(tokenizer(chunk), model).to(device), normalize=True)

    table = _encode_all(encode, model, chunks, autocast, _bar(progress, len(unique), "text"))
    index = {t: i for i, t in enumerate(unique)}
    return table[torch.tensor([index[t] for t in texts], dtype=torch.long)] if len(table) else table


def pair_probability(cos: torch.Tensor | np.ndarray, logit_scale: float, logit_bias: float) -> Any:
    """SigLIP pair probability ``sigmoid(t * cos + b)`` with ``t = exp(logit_scale)`` already applied."""
    if isinstance(cos, np.ndarray):
        return 1.0 / (1.0 + np.exp(-(logit_scale * cos + logit_bias)))
    return torch.sigmoid(logit_scale * cos + logit_bias)


def similarity(ecg_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """All-pairs cosine ``[N_ecg, N_text]`` of normalised embeddings."""
    return ecg_emb @ text_emb.T


def pair_cosines(
    ecg_emb: torch.Tensor, text_emb: torch.Tensor, ecg_index: Sequence[int], text_index: Sequence[int]
) -> torch.Tensor:
    """Cosine of the listed pairs ``(ecg_index[k], text_index[k])`` only, ``[K]``: no ``N x M`` matrix."""
    e = ecg_emb[torch.as_tensor(ecg_index, dtype=torch.long)]
    t = text_emb[torch.as_tensor(text_index, dtype=torch.long)]
    return (e * t).sum(-1)
