"""Zero-shot classification for the benchmark: embeddings once, three prompt sets, AUC with an interval.

Prompt sets (scores are cosines of normalised embeddings; a SigLIP head's shared scale and bias would not
change any AUC):

- ``templates``: each class's words through :data:`fgclep_plugin.training.zeroshot.ECG_TEMPLATES`, averaged by
  open_clip's ``build_zero_shot_classifier``.
- ``ckepe``: MERL's protocol as its code runs it: one string per class, the class's ``CKEPE_prompt.json`` text
  lower-cased, raw cosine (MERL tasks only; the text tower truncates long strings at its context length).
- ``ens``: the FG-CLEP paper's lead ensemble: ``"<class> in lead <x>"`` for the 12 leads plus ``"<class>"``,
  the score the maximum of the 13 cosines.

Macro AUC is scikit-learn's ROC AUC averaged over the classes with both outcomes in the test split (the others
are listed as skipped); every class reports its number of positives; the 95 % interval is a seeded percentile
bootstrap over test records.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from ..ecgdata.ecg import LEADS
from ..model.scoring import LoadedModel, embed_ecgs, embed_texts, similarity
from ..training.zeroshot import ECG_TEMPLATES, macro_auc
from .tasks import Task

PROMPT_SETS = ("templates", "ens", "ckepe")


@dataclass
class EmbeddedSplit:
    """One task split embedded: ``embeddings [N, D]`` (normalised), ``targets [N, C]`` (0/1), sample keys, and
    how many samples the shards held without this task's label (not part of the task)."""

    embeddings: np.ndarray
    targets: np.ndarray
    keys: list[str]
    class_names: tuple[str, ...]
    n_unlabelled: int = 0

    def positives(self) -> dict[str, int]:
        return {c: int(n) for c, n in zip(self.class_names, self.targets.sum(0))}


def target_row(task: Task, labels: Sequence[str], key: str) -> np.ndarray:
    """0/1 row over ``task.class_names``; a label outside the task's classes raises ``ValueError`` naming it."""
    index = {c: i for i, c in enumerate(task.class_names)}
    row = np.zeros(len(index), dtype=np.int64)
    for lab in labels:
        if lab not in index:
            raise ValueError(f"sample {key}: label {lab!r} is not a class of task {task.name}")
        row[index[lab]] = 1
    return row


def embed_split(
    loaded: LoadedModel, task: Task, split: str, batch_size: int = 64, progress: bool = True
) -> EmbeddedSplit:
    """Embed every sample of ``task``'s ``split`` labelled for the task (one pass, through
    :func:`fgclep_plugin.model.scoring.embed_ecgs`)."""
    from ..ecgdata.reader import iter_samples, read_sizes
    from ..training.pipeline import ecg_to_tensor

    urls = task.urls(split)
    rows, keys, skipped = [], [], [0]

    def batches() -> Iterator[torch.Tensor]:
        batch = []
        for s in iter_samples(urls):
            labels = task.labels(s["meta"])
            if labels is None:
                skipped[0] += 1
                continue
            rows.append(target_row(task, labels, s["__key__"]))
            keys.append(s["__key__"])
            batch.append(ecg_to_tensor(s["ecg"], loaded.preprocess))
            if len(batch) == batch_size:
                yield torch.stack(batch)
                batch = []
        if batch:
            yield torch.stack(batch)

    try:
        total = read_sizes(urls)
    except RuntimeError:
        total = None
    emb = embed_ecgs(
        loaded.model,
        batches(),
        device=loaded.device,
        progress=f"{task.name} {split}" if progress else False,
        total=total,
    )
    if not keys:
        raise ValueError(f"task {task.name}: no sample of {urls} has labels[{task.label_key!r}]")
    return EmbeddedSplit(emb.numpy(), np.stack(rows), keys, task.class_names, skipped[0])


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_key(loaded: LoadedModel, task: Task, split: str) -> str | None:
    """Key of an embedding cache entry: checkpoint hash + model + task (label key, classes) + split shards
    (path, size, mtime); ``None`` for a model without a checkpoint (random weights are not reproducible)."""
    if loaded.checkpoint is None:
        return None
    from ..ecgdata.reader import expand_urls

    shards = [(u, os.path.getsize(u), os.stat(u).st_mtime_ns) for u in expand_urls(task.urls(split))]
    spec = {
        "checkpoint_sha256": file_sha256(loaded.checkpoint),
        "model": loaded.name,
        "task": task.name,
        "label_key": task.label_key,
        "classes": list(task.class_names),
        "split": split,
        "shards": shards,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def cached_split(
    loaded: LoadedModel,
    task: Task,
    split: str,
    cache_dir: str | Path | None,
    batch_size: int = 64,
    progress: bool = True,
) -> EmbeddedSplit:
    """:func:`embed_split`, read from / written to ``cache_dir`` (an atomic ``.npz``, no pickles) when given."""
    from ..ecgdata.shards import atomic_write_bytes

    key = cache_key(loaded, task, split) if cache_dir else None
    if key is None:
        return embed_split(loaded, task, split, batch_size, progress)
    path = Path(cache_dir) / f"{task.name}-{split}-{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return EmbeddedSplit(
                z["embeddings"],
                z["targets"],
                [str(k) for k in z["keys"]],
                task.class_names,
                int(z["n_unlabelled"]),
            )
    out = embed_split(loaded, task, split, batch_size, progress)
    buf = io.BytesIO()
    np.savez(
        buf,
        embeddings=out.embeddings,
        targets=out.targets,
        keys=np.array(out.keys, dtype=str),
        n_unlabelled=np.array(out.n_unlabelled),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return out


# ---------------------------------------------------------------------------------------------- prompts


def ens_prompts(words: str) -> list[str]:
    """The paper's ENS prompts of one class: ``"<words> in lead <x>"`` for the 12 leads, then ``"<words>"``."""
    return [f"{words} in lead {lead}" for lead in LEADS] + [words]


def ckepe_prompts(task: Task) -> list[str]:
    """MERL's zero-shot strings: the CKEPE text of every class, lower-cased (as MERL's ``get_class_emd``)."""
    if not task.ckepe:
        raise ValueError(f"task {task.name} has no CKEPE prompts (MERL benchmark tasks only)")
    return [task.ckepe[c].lower() for c in task.class_names]


@torch.no_grad()
def template_classifier(loaded: LoadedModel, texts: Sequence[str]) -> torch.Tensor:
    """``[D, C]`` class embeddings of ``texts`` through :data:`ECG_TEMPLATES` (open_clip's
    ``build_zero_shot_classifier``: template embeddings averaged and re-normalised per class)."""
    from open_clip import build_zero_shot_classifier

    loaded.model.eval()
    return (
        build_zero_shot_classifier(
            loaded.model,
            tokenizer=loaded.tokenizer,
            classnames=list(texts),
            templates=list(ECG_TEMPLATES),
            num_classes_per_batch=10,
            device=loaded.device,
            use_tqdm=False,
        )
        .float()
        .cpu()
    )


def ens_scores(ecg_emb: torch.Tensor, prompt_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ENS: ``prompt_emb`` is ``[C * 13, D]`` (13 prompts per class, class-major); returns the per-prompt
    cosines ``[N, C, 13]`` and their maximum ``[N, C]``."""
    per_prompt = similarity(ecg_emb, prompt_emb).reshape(len(ecg_emb), -1, len(LEADS) + 1)
    return per_prompt, per_prompt.max(dim=-1).values


def prompt_scores(loaded: LoadedModel, task: Task, emb: np.ndarray, prompt_set: str) -> np.ndarray:
    """``[N, C]`` zero-shot scores of ECG embeddings ``emb`` for ``task``'s classes under ``prompt_set``."""
    ecg = torch.from_numpy(emb)
    words = [task.prompt_text(c) for c in task.class_names]
    if prompt_set == "templates":
        return (ecg @ template_classifier(loaded, words)).numpy()
    if prompt_set == "ckepe":
        text = embed_texts(loaded.model, loaded.tokenizer, ckepe_prompts(task), device=loaded.device)
        return similarity(ecg, text).numpy()
    if prompt_set == "ens":
        texts = [p for w in words for p in ens_prompts(w)]
        text = embed_texts(loaded.model, loaded.tokenizer, texts, device=loaded.device)
        return ens_scores(ecg, text)[1].numpy()
    raise ValueError(f"unknown prompt set {prompt_set!r}; choose from {', '.join(PROMPT_SETS)}")


# ------------------------------------------------------------------------------------------------ metrics


def rank_auc(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-column ROC AUC ``[C]`` by the rank-sum (Mann-Whitney) formula, ties averaged (equal to
    scikit-learn's); ``nan`` where a column has a single outcome. Fast enough for thousands of resamples."""
    ranks = rankdata(scores, axis=0)
    pos = targets.sum(0).astype(np.float64)
    neg = len(targets) - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * targets).sum(0) - pos * (pos + 1) / 2) / (pos * neg)
    auc[(pos == 0) | (neg == 0)] = np.nan
    return auc


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
    """Macro AUC (scikit-learn, :func:`fgclep_plugin.training.zeroshot.macro_auc`), per class with positives,
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
                **row,
            }
        )
    return rows
