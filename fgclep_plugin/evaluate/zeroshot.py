"""Zero-shot classification for the benchmark: embeddings once, three prompt sets, AUC with an interval.

Prompt sets (scores are cosines of normalised embeddings; a SigLIP head's shared scale and bias would not
change any AUC):

- ``templates``: each class's words through :data:`fgclep_plugin.model.zeroshot.ECG_TEMPLATES`, averaged by
  open_clip's ``build_zero_shot_classifier`` (:func:`fgclep_plugin.model.zeroshot.template_classifier`, the
  scoring path training's zero-shot check uses).
- ``ckepe``: MERL's protocol as its code runs it: one string per class, the class's ``CKEPE_prompt.json`` text
  lower-cased, raw cosine (MERL tasks only; the text tower truncates long strings at its context length).
- ``ens``: the FG-CLEP paper's lead ensemble: ``"<class> in lead <x>"`` for the 12 leads plus ``"<class>"``,
  the score the maximum of the 13 cosines.

Macro AUC is scikit-learn's ROC AUC averaged over the classes with both outcomes in the test split (the others
are listed as skipped); every class reports its number of positives; labels outside the task's classes are
counted and reported (``outside_labels``); the 95 % interval is a seeded percentile bootstrap over test records.
Embeddings are computed at the loaded model's precision (``load_model(..., precision=)``, default ``fp32``).

Embeddings are computed once per (checkpoint, shard set), whatever the number of tasks reading those shards
(:func:`cached_shards`: an in-process memo per model and an ``.npz`` cache keyed by checkpoint hash, model and
shard identities: local path, size and mtime; a remote shard's URL with the size and ETag / Last-Modified its
server reports, no disk cache when it reports none); each task's targets come afterwards from the samples'
stored ``labels`` (:func:`task_split`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..ecgdata.manifest import file_sha256
from ..ecgdata.opener import local_path
from ..ecgdata.reader import expand_urls
from ..ecgdata.shards import atomic_write_bytes
from ..model.gather import embed_shards_gathered
from ..model.scoring import EmbeddedShards, LoadedModel, embed_texts, similarity
from ..model.zeroshot import ens_prompts, ens_scores, label_targets, macro_auc, rank_auc, template_classifier
from .tasks import Task

PROMPT_SETS = ("templates", "ens", "ckepe")


@dataclass
class EmbeddedSplit:
    """One task split embedded: ``embeddings [N, D]`` (normalised), ``targets [N, C]`` (0/1), sample keys, how
    many samples the shards held without this task's label (not part of the task), and the labels outside the
    task's classes (``{label: samples}``; those samples count with their other labels)."""

    embeddings: np.ndarray
    targets: np.ndarray
    keys: list[str]
    class_names: tuple[str, ...]
    n_unlabelled: int = 0
    outside_labels: dict[str, int] = field(default_factory=dict)

    def positives(self) -> dict[str, int]:
        return {c: int(n) for c, n in zip(self.class_names, self.targets.sum(0))}


def label_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The part of a sample's meta that :meth:`Task.labels` reads (its ``labels`` dict and record id)."""
    return {"labels": meta.get("labels") or {}, "record_id": meta.get("record_id")}


def embed_shards(
    loaded: LoadedModel,
    urls: str | Sequence[str],
    batch_size: int = 64,
    progress: bool | str = True,
) -> EmbeddedShards:
    """:func:`fgclep_plugin.model.scoring.embed_shards` keeping each sample's label meta only, so any task's
    targets can be derived afterwards; under a launcher each process embeds its part of the shards and every
    process gets the whole set (:mod:`fgclep_plugin.model.gather`)."""
    return embed_shards_gathered(loaded, urls, batch_size, progress, keep_meta=label_meta)


def task_split(shards: EmbeddedShards, task: Task, where: str = "") -> EmbeddedSplit:
    """``task``'s split from embedded shards: the samples labelled for the task, their 0/1 targets (labels
    outside the task's classes counted in ``outside_labels``); the others are counted as ``n_unlabelled``.
    ``ValueError`` if no sample is labelled for the task."""
    labels, index = [], []
    for i, meta in enumerate(shards.metas):
        lab = task.labels(meta)
        if lab is not None:
            labels.append(lab)
            index.append(i)
    if not index:
        raise ValueError(
            f"task {task.name}: no sample of {where or 'the shards'} has labels[{task.label_key!r}]"
        )
    targets, outside = label_targets(labels, task.class_names)
    return EmbeddedSplit(
        shards.embeddings[index],
        targets,
        [shards.keys[i] for i in index],
        task.class_names,
        len(shards.keys) - len(index),
        outside,
    )


def embed_split(
    loaded: LoadedModel, task: Task, split: str, batch_size: int = 64, progress: bool = True
) -> EmbeddedSplit:
    """Embed ``task``'s ``split`` afresh (no memo, no cache) and keep the samples labelled for the task."""
    urls = task.urls(split)
    shards = embed_shards(loaded, urls, batch_size, f"{task.name} {split}" if progress else False)
    return task_split(shards, task, str(urls))


# What fsspec filesystems report that changes when an object's content does (HTTP response headers, S3, GCS,
# the Hugging Face hub, local-like filesystems): the validators of a remote shard's identity.
REMOTE_VALIDATORS = (
    "ETag", "Content-MD5", "Digest", "Last-Modified",  # http(s)
    "LastModified", "VersionId",  # s3
    "etag", "md5Hash", "crc32c", "generation", "updated",  # gcs
    "blob_id", "lfs", "last_commit",  # hf
    "mtime", "checksum",
)  # fmt: skip

# (local real path, size, mtime_ns) or (URL, size or None, validators or None): see shard_files
ShardIdentity = tuple[str, int | None, int | dict[str, str] | None]


def remote_identity(url: str) -> ShardIdentity:
    """``(url, size, validators)`` of a remote shard from the one metadata request fsspec's ``info`` makes
    (HTTP: a HEAD): ``validators`` are the fields of :data:`REMOTE_VALIDATORS` it reports, as strings; ``None``
    (no disk cache) when it reports none, or when the request fails (reading the shard then raises the error
    naming the URL)."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
        info = fs.info(path)
    except (ImportError, ValueError, OSError):
        return (url, None, None)
    found = {k: str(info[k]) for k in REMOTE_VALIDATORS if info.get(k) not in (None, "")}
    size = info.get("size")
    return (url, int(size) if size is not None else None, found or None)


def shard_files(urls: str | Sequence[str]) -> list[ShardIdentity]:
    """The identity of a shard set, one entry per shard of ``urls``:

    - a local file (a path or a ``file:`` URL): ``(real path, size, mtime_ns)``;
    - a remote URL (``http(s)://``, ``s3://``, ...): ``(url, size, validators)``, :func:`remote_identity`: the
      size and ETag / Last-Modified / content hash the filesystem reports (one metadata request per shard, no
      download). A validator is only as fine as the server makes it (HTTP ``Last-Modified`` has 1 s
      resolution), as mtime is for a local file;
    - a ``pipe:`` command, or a remote URL reporting no validator: ``(url, None, None)``: never cached on disk
      (:func:`shards_cache_key` is ``None``), only remembered by URL in this process (:func:`cached_shards`).
    """
    out: list[ShardIdentity] = []
    for u in expand_urls(urls):
        path = local_path(u)
        if path is not None:
            st = os.stat(path)
            out.append((os.path.realpath(path), st.st_size, st.st_mtime_ns))
        elif u.startswith("pipe:"):
            out.append((u, None, None))
        else:
            out.append(remote_identity(u))
    return out


def shards_cache_key(
    loaded: LoadedModel, urls: str | Sequence[str], files: list[ShardIdentity] | None = None
) -> str | None:
    """Key of an embedding cache entry: checkpoint hash + model + precision + shard identities
    (:func:`shard_files`: local path, size, mtime; remote URL, size, validators), the same for every task
    reading those shards; ``None`` without a checkpoint (random weights are not reproducible) or when a shard
    has no identity (a ``pipe:`` command, a remote URL whose server reports no validator)."""
    if loaded.checkpoint is None:
        return None
    files = shard_files(urls) if files is None else files
    if any(validator is None for _, _, validator in files):
        return None
    spec = {
        "format": "shards-v2",
        "checkpoint_sha256": file_sha256(loaded.checkpoint),
        "model": loaded.name,
        "precision": loaded.precision,
        "shards": files,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def cache_key(loaded: LoadedModel, task: Task, split: str) -> str | None:
    """:func:`shards_cache_key` of ``task``'s ``split`` shards (the task itself is not part of the key)."""
    return shards_cache_key(loaded, task.urls(split))


# Embedded shard sets per live model (dropped with the model): same files again -> no second pass.
_MEMO: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, EmbeddedShards]] = weakref.WeakKeyDictionary()


def clear_memo() -> None:
    """Forget the in-process embeddings of :func:`cached_shards`."""
    _MEMO.clear()


def cached_shards(
    loaded: LoadedModel,
    urls: str | Sequence[str],
    cache_dir: str | Path | None,
    batch_size: int = 64,
    progress: bool | str = True,
) -> EmbeddedShards:
    """:func:`embed_shards`, once per (model, shard identities) in this process, and read from / written to
    ``cache_dir`` (one atomic ``.npz`` per checkpoint x shard set, no pickles; it keeps keys, label metas and
    embeddings, not the reports) when given and the shards have a cache key (:func:`shards_cache_key`)."""
    files = shard_files(urls)
    memo = _MEMO.setdefault(loaded.model, {})
    ident = json.dumps(files)
    if ident in memo:
        return memo[ident]
    key = shards_cache_key(loaded, urls, files) if cache_dir else None
    path = Path(cache_dir) / f"{Path(files[0][0]).stem if files else 'empty'}-{key}.npz" if key else None
    if path is not None and path.is_file():
        with np.load(path, allow_pickle=False) as z:
            out = EmbeddedShards(
                urls, z["embeddings"], [str(k) for k in z["keys"]], None, json.loads(str(z["metas"][()]))
            )
    else:
        out = embed_shards(loaded, urls, batch_size, progress)
        if path is not None:
            buf = io.BytesIO()
            np.savez(
                buf,
                embeddings=out.embeddings,
                keys=np.array(out.keys, dtype=str),
                metas=np.array(json.dumps(out.metas)),
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, buf.getvalue())
    memo[ident] = out
    return out


def cached_split(
    loaded: LoadedModel,
    task: Task,
    split: str,
    cache_dir: str | Path | None,
    batch_size: int = 64,
    progress: bool = True,
) -> EmbeddedSplit:
    """``task``'s ``split`` from :func:`cached_shards`: tasks reading the same shards share one embedding."""
    urls = task.urls(split)
    shards = cached_shards(loaded, urls, cache_dir, batch_size, f"embed {split}" if progress else False)
    return task_split(shards, task, str(urls))


# ---------------------------------------------------------------------------------------------- prompts


def ckepe_prompts(task: Task) -> list[str]:
    """MERL's zero-shot strings: the CKEPE text of every class, lower-cased (as MERL's ``get_class_emd``)."""
    if not task.ckepe:
        raise ValueError(f"task {task.name} has no CKEPE prompts (MERL benchmark tasks only)")
    return [task.ckepe[c].lower() for c in task.class_names]


def prompt_scores(loaded: LoadedModel, task: Task, emb: np.ndarray, prompt_set: str) -> np.ndarray:
    """``[N, C]`` zero-shot scores of ECG embeddings ``emb`` for ``task``'s classes under ``prompt_set``."""
    ecg = torch.from_numpy(emb)
    words = [task.prompt_text(c) for c in task.class_names]
    if prompt_set == "templates":
        classes = template_classifier(
            loaded.model, loaded.tokenizer, words, device=loaded.device, precision=loaded.precision
        )
        return (ecg @ classes).numpy()
    if prompt_set == "ckepe":
        text = embed_texts(
            loaded.model,
            loaded.tokenizer,
            ckepe_prompts(task),
            device=loaded.device,
            precision=loaded.precision,
        )
        return similarity(ecg, text).numpy()
    if prompt_set == "ens":
        texts = [p for w in words for p in ens_prompts(w)]
        text = embed_texts(
            loaded.model, loaded.tokenizer, texts, device=loaded.device, precision=loaded.precision
        )
        return ens_scores(ecg, text)[1].numpy()
    raise ValueError(f"unknown prompt set {prompt_set!r}; choose from {', '.join(PROMPT_SETS)}")


# ------------------------------------------------------------------------------------------------ metrics


def bootstrap_interval(
    scores: np.ndarray | Sequence[np.ndarray],
    targets: np.ndarray,
    classes: Sequence[int] | None = None,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the macro AUC, resampling test records with replacement (seeded).

    ``scores`` ``[N, C]`` or a list of them (repeats of one protocol: each resample's value is their mean);
    ``classes`` restricts to the columns scored at the point estimate. A class with a single outcome in a
    resample is left out of that resample's mean. ``None`` if ``n`` is 0 or no resample scores a class.
    """
    mats = [scores] if isinstance(scores, np.ndarray) else list(scores)
    cols = list(range(targets.shape[1])) if classes is None else list(classes)
    if n <= 0 or not cols:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        idx = rng.integers(0, len(targets), len(targets))
        t = targets[idx][:, cols]
        per = [np.nanmean(a) for a in (rank_auc(m[idx][:, cols], t) for m in mats) if np.isfinite(a).any()]
        if len(per) == len(mats):
            values.append(float(np.mean(per)))
    if not values:
        return None
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def auc_summary(
    scores: np.ndarray | Sequence[np.ndarray],
    targets: np.ndarray,
    class_names: Sequence[str],
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Macro AUC (:func:`fgclep_plugin.model.zeroshot.macro_auc`), per class with positives,
    skipped classes and the bootstrap interval. A list of score matrices (repeats) gives their mean AUC."""
    mats = [scores] if isinstance(scores, np.ndarray) else list(scores)
    runs = [macro_auc(m, targets, class_names) for m in mats]
    per_class = {
        c: {
            "auc": float(np.mean([r["per_class"][c] for r in runs])) if c in runs[0]["per_class"] else None,
            "positives": int(targets[:, i].sum()),
        }
        for i, c in enumerate(class_names)
    }
    scored = [i for i, c in enumerate(class_names) if c in runs[0]["per_class"]]
    return {
        "value": float(np.mean([r["auc"] for r in runs])),
        "interval": bootstrap_interval(mats, targets, scored, bootstrap, seed),
        "per_class": per_class,
        "skipped": runs[0]["skipped"],
        "n_records": len(targets),
    }


def zero_shot_results(
    loaded: LoadedModel,
    task: Task,
    test: EmbeddedSplit,
    prompt_sets: Sequence[str] | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One result row per prompt set (default: every set the task supports) on the embedded test split."""
    sets = (
        [p for p in PROMPT_SETS if p != "ckepe" or task.ckepe] if prompt_sets is None else list(prompt_sets)
    )
    rows = []
    for prompt_set in sets:
        scores = prompt_scores(loaded, task, test.embeddings, prompt_set)
        row = auc_summary(scores, test.targets, task.class_names, bootstrap, seed)
        rows.append(
            {
                "protocol": "zero-shot",
                "prompt_set": prompt_set,
                "metric": "macro AUC",
                "score": "max cosine over 13 prompts" if prompt_set == "ens" else "cosine",
                "n_unlabelled": test.n_unlabelled,
                "outside_labels": test.outside_labels,
                **row,
            }
        )
    return rows
