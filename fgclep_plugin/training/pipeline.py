"""ECG shard pipeline for open_clip training: WebDataset shards -> ``(ecg, tokens)`` batches.

Replaces ``open_clip_train.data.get_data`` for the plugin. The shard-level machinery (epoch-seeded shard
shuffle, resampling with replacement, ``sizes.json`` sizes, ``DataInfo``) is open_clip's own and is called, not
copied; what differs from open_clip's image pipeline is the sample format (``npy`` ECG + ``txt`` report +
``json`` metadata, no image decoding) and the tar reader, which is webdataset's own: webdataset >= 1.0 emits an
end-of-shard marker that open_clip's ``group_by_keys_nothrow`` cannot read.

A deterministic mode (``--ecg-deterministic-data``) reads every shard in order without shuffling and hands
rank ``r`` the ``r``-th slice of each global batch, so an ``N``-process run sees exactly the global batches of a
one-process run with ``N`` times the batch size (used to compare distributed and single-process losses).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

import torch
import webdataset as wds
from open_clip_train.data import (
    DataInfo,
    ResampledShards2,
    SharedEpoch,
    detshuffle2,
    expand_urls,
    get_dataset_size,
)
from webdataset.filters import _shuffle

from ..ecgdata.reader import decode_sample, read_sizes
from ..model.transform import ecg_to_tensor
from .injection import injection_stages

log = logging.getLogger(__name__)

SHARD_SHUFFLE_SIZE = 2000
SHARD_SHUFFLE_INITIAL = 500
SAMPLE_SHUFFLE_SIZE = 5000
SAMPLE_SHUFFLE_INITIAL = 1000


def decode(sample: dict) -> dict:
    """``reader.decode_sample``, with any failure re-raised as a ``ValueError`` naming the sample and shard."""
    try:
        return decode_sample(sample)
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        where = f"sample {sample.get('__key__')!r} in {sample.get('__url__', '?')}"
        raise ValueError(f"{where}: {exc}") from exc


def warn_and_continue(exn: Exception) -> bool:
    """webdataset handler: log the bad sample (the message names it) and skip it, as open_clip does."""
    log.warning("Skipping bad ECG sample: %r", exn)
    return True


class EpochSampleShuffle(wds.PipelineStage):
    """Buffered sample shuffle seeded by (seed, epoch, rank, worker, pass): reproducible, different every epoch.

    (open_clip uses an unseeded ``wds.shuffle`` here; with ``--workers 0`` a worker-seeded shuffle would repeat
    the same order every epoch.) ``pass`` counts the re-reads within one epoch (webdataset's ``with_epoch``
    restarts the pipeline when a reader's shards run out), so a re-read does not replay the first order.
    """

    def __init__(self, bufsize: int, initial: int, seed: int, epoch: SharedEpoch):
        self.bufsize, self.initial, self.seed, self.epoch = bufsize, initial, seed, epoch
        self._last_epoch: int | None = None
        self._pass = 0

    def run(self, src: Iterable) -> Iterator:
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        epoch = self.epoch.get_value()
        self._pass = self._pass + 1 if epoch == self._last_epoch else 0
        self._last_epoch = epoch
        rng = random.Random(f"{self.seed}-{epoch}-{rank}-{worker}-{self._pass}")
        return _shuffle(src, self.bufsize, self.initial, rng)


def resample_seed(seed: int) -> int:
    """Base seed of ``--dataset-resampled`` shard draws for this (``--seed``, rank, dataloader worker).

    ``ResampledShards2`` adds the epoch. open_clip's default falls back to ``rank * 1000 + worker`` without
    dataloader workers, which ignores the epoch, so every epoch would draw the same shard sequence; the
    bases here are spaced 10**6 apart so that ``base + epoch`` never repeats across ranks and workers.
    """
    rank, _, worker, _ = wds.utils.pytorch_worker_info()
    return ((int(seed) * 100_003 + rank) * 1_009 + worker) * 1_000_000


def rank_slice_of_global_batches(batch_size: int) -> Callable[[Iterable], Iterator]:
    """Stage for the deterministic mode: keep this (rank, worker)'s slice of each global batch.

    Samples are numbered in stream order; global batch ``k`` holds samples ``[k*G, (k+1)*G)`` with
    ``G = batch_size * world_size``; rank ``r`` keeps the ``r``-th ``batch_size`` slice, and global batch ``k``
    belongs to dataloader worker ``k % num_workers`` (the DataLoader reads workers round-robin, so step ``k``
    gets global batch ``k``).
    """

    def stage(src: Iterable) -> Iterator:
        rank, world, worker, num_workers = wds.utils.pytorch_worker_info()
        global_batch = batch_size * world
        for i, sample in enumerate(src):
            k, pos = divmod(i, global_batch)
            if pos // batch_size == rank and k % num_workers == worker:
                yield sample

    return stage


def _sample_tensor(sample: dict, decoded: dict, preprocess: Callable | None) -> torch.Tensor:
    """``ecg_to_tensor`` with a transform failure (e.g. NaN in the signal) re-raised naming sample and shard."""
    try:
        return ecg_to_tensor(decoded["ecg"], preprocess)
    except ValueError as exc:
        raise ValueError(f"sample {sample.get('__key__')!r} in {sample.get('__url__', '?')}: {exc}") from exc


def _to_train_pair(preprocess: Callable | None, tokenizer: Callable) -> Callable[[dict], tuple]:
    def convert(sample: dict) -> tuple[torch.Tensor, torch.Tensor]:
        s = decode(sample)
        return _sample_tensor(sample, s, preprocess), tokenizer(s["text"])[0]

    return convert


def get_ecg_wds_dataset(
    args,
    preprocess: Callable | None,
    is_train: bool,
    epoch: int = 0,
    floor: bool = False,
    tokenizer: Callable | None = None,
) -> DataInfo:
    """ECG counterpart of ``open_clip_train.data.get_wds_dataset`` (same arguments, same ``DataInfo``).

    Honours ``--train-data``/``--val-data`` URL forms (brace ranges, ``::`` sets, ``pipe:`` commands),
    ``--dataset-resampled`` (+ ``--train-data-upsampling-factors``), ``--train-num-samples`` or ``sizes.json``,
    ``--val-num-samples``, ``--workers``, per-epoch shuffling seeded by ``--seed`` and the epoch, and the
    plugin's ``--ecg-deterministic-data``.
    """
    input_shards = args.train_data if is_train else args.val_data
    assert input_shards is not None
    deterministic = bool(getattr(args, "ecg_deterministic_data", False))
    resampled = bool(getattr(args, "dataset_resampled", False)) and is_train and not deterministic
    shard_urls = expand_urls(input_shards)[0]
    if not shard_urls:
        raise ValueError(f"no shards in {input_shards!r}")

    num_shards = len(shard_urls)
    if is_train:
        num_samples = args.train_num_samples
        if num_samples is None:
            num_samples = dataset_size(input_shards)
            if not num_samples:
                raise RuntimeError(
                    f"Unknown number of training samples in {input_shards!r}: put a sizes.json beside the "
                    "shards or pass --train-num-samples."
                )
    else:
        num_samples = args.val_num_samples or _size_or_zero(input_shards)
    shared_epoch = SharedEpoch(epoch=epoch)
    if is_train and args.train_data_upsampling_factors is not None:
        assert resampled, "--train-data-upsampling-factors needs --dataset-resampled."

    if resampled:
        pipeline: list = [
            ResampledShards2(
                input_shards,
                weights=args.train_data_upsampling_factors,
                deterministic=True,
                worker_seed=partial(resample_seed, args.seed),
                epoch=shared_epoch,
            )
        ]
    else:
        pipeline = [wds.SimpleShardList(input_shards)]
    if is_train and not deterministic:
        if not resampled:
            pipeline += [
                detshuffle2(
                    bufsize=SHARD_SHUFFLE_SIZE,
                    initial=SHARD_SHUFFLE_INITIAL,
                    seed=args.seed,
                    epoch=shared_epoch,
                ),
                wds.split_by_node,
                wds.split_by_worker,
            ]
        pipeline += [
            wds.tarfile_to_samples(handler=warn_and_continue),
            EpochSampleShuffle(SAMPLE_SHUFFLE_SIZE, SAMPLE_SHUFFLE_INITIAL, args.seed, shared_epoch),
        ]
    elif is_train:  # deterministic: every rank reads the whole stream in order and keeps its slice
        pipeline += [
            wds.tarfile_to_samples(handler=warn_and_continue),
            rank_slice_of_global_batches(args.batch_size),
        ]
    else:
        pipeline += [wds.split_by_worker, wds.tarfile_to_samples(handler=warn_and_continue)]
    injection = getattr(args, "ecg_feature_injection", "append") if is_train else "append"
    if injection == "append":
        pipeline += [
            wds.map(_to_train_pair(preprocess, tokenizer), handler=warn_and_continue),
            wds.batched(args.batch_size, partial=not is_train),
        ]
    else:  # stage-2 features as captions of their own or as extra positives (training/injection.py)

        def to_tensor(sample: dict) -> tuple[torch.Tensor, dict]:
            s = decode(sample)
            return _sample_tensor(sample, s, preprocess), s

        pipeline += injection_stages(
            injection, to_tensor, tokenizer, args.batch_size, args.seed, shared_epoch, warn_and_continue
        )
    dataset = wds.DataPipeline(*pipeline)

    if is_train:
        if not resampled and not deterministic:
            readers = max(1, args.workers)  # --workers 0: each process reads for itself
            assert num_shards >= readers * args.world_size, (
                f"{num_shards} shard(s) in {input_shards!r} but {readers} worker(s) x {args.world_size} "
                "process(es): every worker needs a shard (use --dataset-resampled, fewer workers or "
                "more, smaller shards)"
            )
        round_fn = math.floor if floor else math.ceil
        global_batch_size = args.batch_size * args.world_size
        num_batches = round_fn(num_samples / global_batch_size)
        num_workers = max(1, args.workers)
        num_worker_batches = round_fn(num_batches / num_workers)
        num_batches = num_worker_batches * num_workers
        num_samples = num_batches * global_batch_size
        dataset = dataset.with_epoch(num_worker_batches)
    else:
        num_batches = math.ceil(num_samples / args.batch_size)

    dataloader = wds.WebLoader(
        dataset, batch_size=None, shuffle=False, num_workers=args.workers, persistent_workers=args.workers > 0
    )
    dataloader.num_batches = num_batches
    dataloader.num_samples = num_samples
    return DataInfo(dataloader=dataloader, shared_epoch=shared_epoch)


def dataset_size(urls: str) -> int | None:
    """Number of samples in ``urls``: :func:`fgclep_plugin.ecgdata.reader.read_sizes` (every folder's ``sizes.json``),
    or open_clip's lookup (``__len__`` file) when there is no ``sizes.json``."""
    total = read_sizes(urls)
    return get_dataset_size(urls)[0] if total is None else total


def _size_or_zero(shards: str) -> int:
    try:
        return dataset_size(shards) or 0
    except (KeyError, OSError, ValueError, RuntimeError):
        return 0


def collate_labelled(samples: list) -> tuple[torch.Tensor, list]:
    """Batch ``(ecg tensor, labels)`` pairs: stacked ECGs, labels kept as a list."""
    return torch.stack([s[0] for s in samples]), [s[1] for s in samples]


def get_ecg_labelled_loader(
    urls: str, preprocess: Callable | None, batch_size: int, label_fn: Callable[[dict], Any], workers: int = 0
) -> wds.WebLoader:
    """Ordered loader of ``(ecg batch, [label_fn(meta) per sample])`` over labelled shards (no shuffling)."""

    def convert(sample: dict) -> tuple[torch.Tensor, Any]:
        s = decode(sample)
        return _sample_tensor(sample, s, preprocess), label_fn(s["meta"])

    dataset = wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.split_by_worker,
        wds.tarfile_to_samples(handler=warn_and_continue),
        wds.map(convert, handler=warn_and_continue),
        wds.batched(batch_size, partial=True, collation_fn=collate_labelled),
    )
    return wds.WebLoader(dataset, batch_size=None, shuffle=False, num_workers=workers)


def get_ecg_data(args, preprocess_fns: tuple, epoch: int = 0, tokenizer: Callable | None = None) -> dict:
    """Drop-in for ``open_clip_train.data.get_data``: ``{"train": DataInfo, "val": DataInfo}`` over ECG shards."""
    preprocess_train, preprocess_val = preprocess_fns
    if getattr(args, "ecg_deterministic_data", False):
        preprocess_train = preprocess_val  # no random crop either
    for flag in ("imagenet_val", "imagenet_v2"):
        if getattr(args, flag, None):
            raise ValueError(f"--{flag.replace('_', '-')} is an image benchmark; use --ecg-zeroshot-data")
    if getattr(args, "dataset_type", "auto") not in ("auto", "webdataset"):
        raise ValueError(f"--dataset-type {args.dataset_type}: the ECG pipeline reads WebDataset shards only")
    data = {}
    if args.train_data:
        data["train"] = get_ecg_wds_dataset(
            args, preprocess_train, is_train=True, epoch=epoch, tokenizer=tokenizer
        )
    if args.val_data:
        data["val"] = get_ecg_wds_dataset(args, preprocess_val, is_train=False, tokenizer=tokenizer)
    return data
