"""How stage-2 features enter training (``--ecg-feature-injection``).

A stage-2 sample keeps its original report and kept features in ``json["stage2"]`` (``report``, ``kept``);
its ``txt`` is the report with the kept features appended. Three ways to train on them:

* ``append`` (default, the paper's): the ``txt`` as written, one caption per ECG. Measured on the synthetic
  corpus (docs/results.md, "The study: how features enter training decides"), appended features lower waveform
  feature zero-shot AUC even when they are all true; ``caption`` and ``multi-positive`` raise it, and
  ``multi-positive`` is what ``fgclep demo`` trains stage 3 with;
* ``caption``: each epoch an ECG's caption is drawn uniformly from its original report and each kept
  feature on its own (seeded by ``--seed``, the epoch and the sample key);
* ``multi-positive``: the batch's texts are the B original reports followed by the U distinct kept features of
  the batch; ECG ``i``'s positives are its own report and every feature kept for it, and the sigmoid loss
  (``fgclep_plugin.model.loss.MultiPositiveLoss``) counts every other (ECG, text) pair as a negative.

Samples without ``stage2`` (original shards) train on their ``txt`` in every mode. ``append`` stays the entry
point's default because it runs everywhere: ``multi-positive`` runs in one process (the loss raises in a
multi-process run) and not with ``--accum-freq`` > 1 (open_clip's accumulation concatenates every model output
along the batch, and a micro-batch's positives are ``[B, M]`` with its own M). For ``multi-positive`` the
positives travel with the tokens through open_clip's loop (which hands the model ``(images, texts)``): the
text tensor is ``[M, L + B]``, tokens then a 0/1 membership column per ECG; :func:`split_positives` wraps the
model's ``forward`` to take them off before the text tower and add ``positives`` ``[B, M]`` to its output dict,
which open_clip passes on to the loss.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch
import webdataset as wds

INJECTIONS = ("append", "caption", "multi-positive")


def stage2_parts(sample: dict[str, Any]) -> tuple[str, list[str]]:
    """(original report, kept features) of a decoded sample; (``txt``, []) without stage-2 metadata."""
    s2 = (sample.get("meta") or {}).get("stage2") or {}
    if not s2:
        return sample["text"], []
    return str(s2.get("report", sample["text"])), [str(f) for f in s2.get("kept") or []]


def caption_choice(sample: dict[str, Any], seed: int, epoch: int) -> str:
    """The caption of ``sample`` this epoch: its report or one kept feature, uniformly, seeded."""
    report, kept = stage2_parts(sample)
    if not kept:
        return sample["text"]
    return random.Random(f"{seed}-{epoch}-{sample['__key__']}").choice([report, *kept])


def collate_multi_positive(tokenizer: Callable) -> Callable[[list], tuple[torch.Tensor, torch.Tensor]]:
    """Batch ``(ecg, report, kept)`` triples into ``(ecgs [B, ...], texts [M, L + B])`` (module docstring)."""

    def collate(samples: list) -> tuple[torch.Tensor, torch.Tensor]:
        b = len(samples)
        features = list(dict.fromkeys(f for _, _, kept in samples for f in kept))
        tokens = tokenizer([r for _, r, _ in samples] + features)  # [M, L], M = B + U
        member = torch.zeros(tokens.shape[0], b, dtype=tokens.dtype)  # [M, B]: text j is a positive of ECG i
        row = {f: b + j for j, f in enumerate(features)}
        for i, (_, _, kept) in enumerate(samples):
            member[i, i] = 1
            for f in kept:
                member[row[f], i] = 1
        return torch.stack([s[0] for s in samples]), torch.cat([tokens, member], dim=1)

    return collate


def injection_stages(
    mode: str,
    to_tensor: Callable[[dict], tuple[torch.Tensor, dict]],
    tokenizer: Callable,
    batch_size: int,
    seed: int,
    epoch: Any,
    handler: Callable,
) -> list:
    """webdataset stages turning raw training samples into batches for ``mode`` (not ``append``).

    ``to_tensor(raw) -> (ecg tensor, decoded sample)``; ``epoch``: open_clip's ``SharedEpoch``."""
    if mode == "caption":

        def convert(raw: dict) -> tuple[torch.Tensor, torch.Tensor]:
            x, s = to_tensor(raw)
            return x, tokenizer(caption_choice(s, seed, epoch.get_value()))[0]

        return [wds.map(convert, handler=handler), wds.batched(batch_size, partial=False)]
    if mode == "multi-positive":

        def triple(raw: dict) -> tuple[torch.Tensor, str, list[str]]:
            x, s = to_tensor(raw)
            report, kept = stage2_parts(s)
            return x, report, kept

        return [
            wds.map(triple, handler=handler),
            wds.batched(batch_size, partial=False, collation_fn=collate_multi_positive(tokenizer)),
        ]
    raise ValueError(f"--ecg-feature-injection must be one of {INJECTIONS}, got {mode!r}")


def split_positives(model: torch.nn.Module) -> torch.nn.Module:
    """Wrap ``model.forward`` for ``multi-positive`` batches: texts ``[M, L + B]`` -> tokens ``[M, L]`` for the
    model, ``positives`` ``[B, M]`` (float) into its output dict. Returns the model."""
    forward = model.forward

    def forward_with_positives(image: torch.Tensor | None = None, text: torch.Tensor | None = None):
        if image is None or text is None:
            return forward(image, text)
        b = image.shape[0]
        out = forward(image, text[:, :-b])
        out["positives"] = text[:, -b:].T.float()
        return out

    model.forward = forward_with_positives
    return model
