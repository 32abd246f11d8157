"""Embedding ECGs, shard sets and texts, and scoring (ECG, text) pairs: the one path that training's zero-shot
check, evaluation, stage-2 validation, retrieval, figures and the benchmarks share.

An FGCLEP model is an open_clip ``CustomTextCLIP`` with the ECG tower as its ``visual``; a pair's score is the
cosine of the two normalised embeddings and, with the model's SigLIP head, its sigmoid probability
``sigmoid(exp(logit_scale) * cos + logit_bias)`` (what the model was trained to output for a matching pair).

Precision is passed explicitly as open_clip's ``--precision`` name (``fp32``, ``amp``, ``amp_bf16``, ``bf16``,
...): the same autocast and input dtype as open_clip_train's loop (:func:`precision_context`).
The device is chosen once, by :func:`load_model` (:func:`fgclep_plugin.model.device.choose_device`: ``auto`` =
``cuda:LOCAL_RANK`` when CUDA is available), and shard sets are decoded and transformed by the model's
``workers`` DataLoader processes while the encoder runs (:func:`embed_shards`).

open_clip itself is imported where a model is built, not at module import: the ``fgclep`` command imports
the evaluation modules (and so this one) to build its parser (start-up time).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from open_clip_train.precision import get_autocast
from tqdm import tqdm

from ..ecgdata.reader import expand_urls, iter_samples, read_sizes
from .device import choose_device
from .transform import batch_to_tensor, ecg_to_tensor


@dataclass
class LoadedModel:
    """A model ready for scoring: the module (eval mode), its val transform and tokenizer, where it came from,
    the device it sits on, the open_clip precision every embedding of it is computed at and the DataLoader
    worker processes that decode and transform shards for it (0: the main process)."""

    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Callable
    name: str
    checkpoint: str | None
    device: torch.device
    precision: str = "fp32"
    workers: int = 0

    @property
    def logit_scale(self) -> float:
        """``exp(logit_scale)``: the temperature ``t`` of the SigLIP head."""
        return float(self.model.logit_scale.detach().exp())

    @property
    def logit_bias(self) -> float:
        """The SigLIP bias ``b`` (0 for a model without one)."""
        bias = getattr(self.model, "logit_bias", None)
        return 0.0 if bias is None else float(bias.detach())


def load_model(
    name: str,
    checkpoint: str | None = None,
    device: str | torch.device | None = "cpu",
    precision: str = "fp32",
    workers: int = 0,
) -> LoadedModel:
    """Build model ``name`` through open_clip on ``device`` (:func:`~.device.choose_device`: ``auto`` or None =
    ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU) and load ``checkpoint`` (an open_clip training
    checkpoint or a state dict; read with ``weights_only=True``); its embeddings are computed at open_clip
    ``precision``, its shards decoded by ``workers`` processes. Raises ``FileNotFoundError`` naming a missing
    checkpoint."""
    import open_clip  # start-up time (module docstring)

    from .registry import register  # imports open_clip: start-up time (module docstring)

    register()
    device = choose_device(device)
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} not found")
    model, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=checkpoint, device=device, weights_only=True
    )
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    return LoadedModel(model, preprocess, tokenizer, name, checkpoint, device, precision, workers)


def precision_context(
    precision: str, device: str | torch.device
) -> tuple[Callable[[], Any], torch.dtype | None]:
    """open_clip's ``--precision`` -> (autocast context factory, ECG input dtype), as open_clip_train's loop
    uses them (``amp``/``amp_bf16``: autocast; ``fp16``/``bf16`` and ``pure_*``: inputs cast)."""
    from open_clip import get_input_dtype  # start-up time (module docstring)

    return get_autocast(precision, device_type=torch.device(device).type), get_input_dtype(precision)


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
    precision: str = "fp32",
    progress: bool | str = False,
    total: int | None = None,
) -> torch.Tensor:
    """L2-normalised ECG embeddings ``[N, D]`` (float32, CPU) of already transformed ECG batches
    ``[B, leads, L]`` at open_clip ``precision``; the model is put in eval mode for the pass and restored after."""
    autocast, input_dtype = precision_context(precision, device)

    def encode(ecg: torch.Tensor) -> torch.Tensor:
        return model.encode_image(ecg.to(device=device, dtype=input_dtype or torch.float32), normalize=True)

    return _encode_all(encode, model, batches, autocast, _bar(progress, total, "ecg"))


def trim_padding(tokens: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """``tokens [B, context]`` without the trailing columns that are padding in every row, where the text
    tower masks padding (Hugging Face towers: the same embeddings, up to float rounding); else unchanged."""
    from open_clip.hf_model import HFTextEncoder  # start-up time (module docstring)

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
    precision: str = "fp32",
    progress: bool | str = False,
) -> torch.Tensor:
    """L2-normalised text embeddings ``[len(texts), D]`` (float32, CPU) at open_clip ``precision``. Each
    distinct text is encoded once (repeats share its row), in batches of ``batch_size`` of similar length,
    trimmed of common padding."""
    autocast = precision_context(precision, device)[0]
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


# ------------------------------------------------------------------------------------------- shard sets


@dataclass
class EmbeddedShards:
    """Every sample of a shard set embedded once, in shard order: ``embeddings [N, D]`` (normalised, float32),
    sample keys, reports and metadata (as ``embed_shards``'s ``keep_meta`` left it). ``texts`` is ``None``
    where the reports were not kept (the evaluation's embedding cache holds keys, labels and embeddings).
    ``shard_sizes``: samples per shard of ``urls``, in order (where known)."""

    urls: str | Sequence[str]
    embeddings: np.ndarray
    keys: list[str]
    texts: list[str] | None
    metas: list[dict[str, Any]]
    shard_sizes: list[int] | None = None


def in_shard_order(
    urls: str | Sequence[str],
    where: np.ndarray,
    embeddings: np.ndarray,
    keys: Sequence[str],
    texts: Sequence[str] | None,
    metas: Sequence[dict[str, Any]],
    n_shards: int,
) -> EmbeddedShards:
    """The samples whose ``where [N, 2]`` rows are (shard number, sample number in the shard), in any order,
    as one :class:`EmbeddedShards` in shard order with the samples per shard of shards ``0 .. n_shards-1``:
    what :func:`embed_shards` (workers interleave) and :func:`~.gather.merge_parts` (processes) both need."""
    idx = np.lexsort((where[:, 1], where[:, 0]))  # by shard number, then sample number
    return EmbeddedShards(
        urls,
        embeddings[idx],
        [keys[i] for i in idx],
        None if texts is None else [texts[i] for i in idx],
        [metas[i] for i in idx],
        np.bincount(where[:, 0], minlength=n_shards).tolist(),
    )


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread inside, for small ops that lose to the thread pool's start-up and to contention on
    a busy machine: per-sample transforms (measured: 86 ms per ECG at 2 threads, 1.8 ms at 1; DataLoader
    workers already run on one thread) and the linear probe's head."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class ShardBatches(torch.utils.data.IterableDataset):
    """Batches of a shard list decoded and transformed where they are read (a DataLoader worker, or the main
    process without workers); worker ``w`` of ``W`` reads shards ``w, w + W, ...``. A batch is ``(ecgs
    [B, leads, L] float32, order [B, 2] (shard number, sample number in its shard), keys, texts, metas)``."""

    def __init__(
        self,
        shards: Sequence[str],
        preprocess: Callable | None,
        batch_size: int,
        keep_meta: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ):
        self.shards, self.preprocess, self.batch_size, self.keep_meta = (
            list(shards),
            preprocess,
            batch_size,
            keep_meta,
        )

    def _batch(self, samples: list[tuple[int, int, dict[str, Any]]]) -> tuple:
        # one transform over the batch on every thread (2-3x faster than one by one); one by one, on one
        # thread, where the ECGs differ in shape or one is bad (its error names nothing else)
        ecgs = batch_to_tensor([s["ecg"] for _, _, s in samples], self.preprocess)
        if ecgs is None:
            with one_thread():
                ecgs = torch.stack([ecg_to_tensor(s["ecg"], self.preprocess) for _, _, s in samples])
        keep = self.keep_meta or (lambda meta: meta)
        return (
            ecgs,
            torch.tensor([(k, j) for k, j, _ in samples], dtype=torch.long).reshape(-1, 2),
            [s["__key__"] for _, _, s in samples],
            [s["text"] for _, _, s in samples],
            [keep(s["meta"]) for _, _, s in samples],
        )

    def __iter__(self) -> Iterator[tuple]:
        info = torch.utils.data.get_worker_info()
        w, n = (0, 1) if info is None else (info.id, info.num_workers)
        batch: list[tuple[int, int, dict[str, Any]]] = []
        for k in range(w, len(self.shards), n):
            for j, s in enumerate(iter_samples(self.shards[k])):
                batch.append((k, j, s))
                if len(batch) == self.batch_size:
                    yield self._batch(batch)
                    batch = []
        if batch:
            yield self._batch(batch)


def as_is(batch: Any) -> Any:
    """A DataLoader's ``collate_fn`` that passes a ready batch on unchanged (picklable for its workers)."""
    return batch


def embed_shards(
    loaded: LoadedModel,
    urls: str | Sequence[str],
    batch_size: int = 64,
    progress: bool | str = False,
    keep_meta: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> EmbeddedShards:
    """Embed every ECG of the shards ``urls`` through the model's val transform and :func:`embed_ecgs` (at
    ``loaded.precision`` on ``loaded.device``), labelled or not, the shards decoded and transformed by
    ``loaded.workers`` DataLoader processes while the encoder runs; ``keep_meta`` picks what of each sample's
    metadata to keep (default: all of it). The result is in shard order whatever the workers' interleaving.
    Raises ``ValueError`` naming the shards when they hold no sample."""
    shards = expand_urls(urls)
    loader = torch.utils.data.DataLoader(
        ShardBatches(shards, loaded.preprocess, batch_size, keep_meta),
        batch_size=None,  # the dataset batches
        collate_fn=as_is,  # not default_convert: it walks every metadata dict, list and number (half the pass)
        num_workers=min(loaded.workers, len(shards)),
        pin_memory=loaded.device.type == "cuda",
    )
    order: list[torch.Tensor] = []
    keys: list[str] = []
    texts: list[str] = []
    metas: list[dict[str, Any]] = []

    def batches() -> Iterator[torch.Tensor]:
        for ecgs, where, k, t, m in loader:
            order.append(where)
            keys.extend(k)
            texts.extend(t)
            metas.extend(m)
            yield ecgs

    try:
        total = read_sizes(urls)
    except RuntimeError:
        total = None
    emb = embed_ecgs(loaded.model, batches(), loaded.device, loaded.precision, progress=progress, total=total)
    if not keys:
        raise ValueError(f"no samples in {urls}")
    return in_shard_order(urls, torch.cat(order).numpy(), emb.numpy(), keys, texts, metas, len(shards))
