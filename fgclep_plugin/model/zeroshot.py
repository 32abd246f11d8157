"""ECG zero-shot classification: class prompt embeddings vs ECG embeddings, macro AUC over present classes.

The one zero-shot scoring path: training's check after an epoch (:mod:`fgclep_plugin.training.zeroshot`), the
evaluation (:mod:`fgclep_plugin.evaluate.zeroshot`), the demo and the benchmarks all build class embeddings with
:func:`template_classifier`, targets with :func:`label_targets` and AUCs with :func:`macro_auc` (:func:`rank_auc`). Policies, the
same everywhere:

- labels outside the class list are counted and reported (``outside_labels``: ``{label: samples}``), never
  silently dropped and never an error; a sample's other labels still count;
- precision is passed explicitly as open_clip's ``--precision`` name (default ``fp32``); ECG and prompt
  embeddings are computed under the same autocast (:func:`fgclep_plugin.model.scoring.precision_context`).

Scores are cosines of normalised embeddings; a SigLIP head's shared scale and bias would not change any AUC.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from ..ecgdata.ecg import LEADS
from .scoring import embed_ecgs, precision_context, similarity

ECG_TEMPLATES: tuple[str, ...] = (
    "{}.",
    "ECG showing {}.",
    "an electrocardiogram with {}.",
    "the ECG shows {}.",
)
"""Prompt templates for class names (averaged per class by ``build_zero_shot_classifier``)."""


def default_prompt_text(class_name: str) -> str:
    """Text a class name stands for in prompts: label codes such as ``atrial_fibrillation`` read as words."""
    return class_name.replace("_", " ")


def load_prompt_map(path: str | Path) -> dict[str, str]:
    """``{class name: prompt text}`` from a JSON file (e.g. ``{"STTC": "ST/T change"}``).

    Label codes such as PTB-XL's ``NORM``/``MI``/``STTC`` or SNOMED numbers mean nothing to a text tower; the
    mapped text is what goes into the templates. Raises ``ValueError`` naming the file on bad content.
    """
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"zero-shot prompt file {path}: {exc}") from exc
    if not isinstance(value, dict) or not all(isinstance(v, str) and v for v in value.values()):
        raise ValueError(f"zero-shot prompt file {path}: expected a JSON object {{class name: prompt text}}")
    return {str(k): v for k, v in value.items()}


def mapped_prompt_text(prompts: Mapping[str, str], class_name: str) -> str:
    """``prompts[class_name]`` if mapped, else :func:`default_prompt_text`."""
    return prompts.get(class_name) or default_prompt_text(class_name)


def ens_prompts(words: str) -> list[str]:
    """The paper's ENS prompts of one class: ``"<words> in lead <x>"`` for the 12 leads, then ``"<words>"``
    (the evaluation's ENS prompt set and stage 2's ``lead-ensemble`` rule)."""
    return [f"{words} in lead {lead}" for lead in LEADS] + [words]


def ens_scores(ecg_emb: torch.Tensor, prompt_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ENS: ``prompt_emb`` is ``[C * 13, D]`` (13 prompts per class, class-major); returns the per-prompt
    cosines ``[N, C, 13]`` and their maximum ``[N, C]``."""
    per_prompt = similarity(ecg_emb, prompt_emb).reshape(len(ecg_emb), -1, len(LEADS) + 1)
    return per_prompt, per_prompt.max(dim=-1).values


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


def macro_auc(scores: np.ndarray, targets: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Macro ROC AUC (:func:`rank_auc`) over classes that have both positive and negative samples.

    ``scores``/``targets``: ``[N, C]``. Returns ``auc`` (nan if no class qualifies), ``per_class`` and
    ``skipped`` (classes with a single target value). ``ValueError`` on a NaN or infinite score.
    """
    scores = np.asarray(scores)
    if not np.isfinite(scores).all():
        raise ValueError(f"zero-shot scores hold {int((~np.isfinite(scores)).sum())} NaN or infinite values")
    aucs = rank_auc(scores, np.asarray(targets))
    per_class = {name: float(a) for name, a in zip(class_names, aucs) if np.isfinite(a)}
    skipped = [name for name, a in zip(class_names, aucs) if not np.isfinite(a)]
    auc = float(np.mean(list(per_class.values()))) if per_class else float("nan")
    return {"auc": auc, "per_class": per_class, "skipped": skipped}


def label_targets(
    labels: Sequence[Sequence[str]], class_names: Sequence[str]
) -> tuple[np.ndarray, dict[str, int]]:
    """0/1 targets ``[N, C]`` over ``class_names`` and the labels outside the class list, ``{label: number of
    samples carrying it}`` (sorted; empty when every label is a class)."""
    index = {c: i for i, c in enumerate(class_names)}
    targets = np.zeros((len(labels), len(index)), dtype=np.int64)
    outside: Counter[str] = Counter()
    for row, lab in enumerate(labels):
        for c in set(lab):
            if c in index:
                targets[row, index[c]] = 1
            else:
                outside[c] += 1
    return targets, dict(sorted(outside.items()))


@torch.no_grad()
def template_classifier(
    model: torch.nn.Module,
    tokenizer: Callable,
    texts: Sequence[str],
    templates: Sequence[str] = ECG_TEMPLATES,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> torch.Tensor:
    """``[D, C]`` class embeddings (float32, CPU) of the class words ``texts`` through ``templates``:
    open_clip's ``build_zero_shot_classifier`` (template embeddings averaged and re-normalised per class), in
    eval mode (training mode restored after) under ``precision``'s autocast."""
    from open_clip import build_zero_shot_classifier  # start-up time (see fgclep_plugin.model.scoring)

    autocast = precision_context(precision, device)[0]
    was_training = model.training
    model.eval()
    try:
        with autocast():
            classifier = build_zero_shot_classifier(
                model,
                tokenizer=tokenizer,
                classnames=list(texts),
                templates=list(templates),
                num_classes_per_batch=10,
                device=device,
                use_tqdm=False,
            )
    finally:
        model.train(was_training)
    return classifier.float().cpu()


@torch.no_grad()
def zero_shot_auc(
    model: torch.nn.Module,
    tokenizer: Callable,
    loader: Iterable[tuple[torch.Tensor, list[list[str]]]],
    class_names: Sequence[str] | None = None,
    templates: Sequence[str] = ECG_TEMPLATES,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    prompt_text: Callable[[str], str] = default_prompt_text,
    drop_unlabelled: bool = True,
) -> dict[str, Any]:
    """Zero-shot macro AUC of ``model`` on labelled ECGs.

    ``loader`` yields ``(ecgs [B, leads, L] already transformed, labels)`` with one list of class names per
    sample. ``class_names`` defaults to the sorted union of the labels seen; ``prompt_text(name)`` is put into
    the templates (default: underscores read as spaces). Scores are cosines between the ECG embedding and each
    class's :func:`template_classifier` embedding. Samples without any label are dropped (the PTB-XL benchmark
    protocol) unless ``drop_unlabelled=False`` counts them as negatives of every class. Returns ``auc`` (macro
    over classes present with both outcomes), ``per_class``, ``skipped``, ``n_samples`` (samples scored),
    ``n_unlabelled`` (samples without a label), ``outside_labels`` (labels not in ``class_names``, with their
    numbers of samples), ``class_names``.
    """
    labels: list[list[str]] = []

    def ecg_batches():
        for ecg, batch_labels in loader:
            labels.extend(list(lab) for lab in batch_labels)
            yield ecg

    ecg_emb = embed_ecgs(model, ecg_batches(), device=device, precision=precision)
    if not labels:
        raise ValueError("zero-shot set is empty")
    labelled = [bool(lab) for lab in labels]
    n_unlabelled = labelled.count(False)
    if drop_unlabelled:
        if not any(labelled):
            raise ValueError(f"zero-shot set: no sample has a label ({len(labels)} samples)")
        ecg_emb = ecg_emb[torch.tensor(labelled)]
        labels = [lab for lab in labels if lab]
    names = sorted({c for lab in labels for c in lab}) if class_names is None else list(class_names)
    if not names:
        raise ValueError("zero-shot set has no class labels")
    classifier = template_classifier(
        model, tokenizer, [prompt_text(n) for n in names], templates, device, precision
    )
    scores = (ecg_emb @ classifier).numpy()
    targets, outside = label_targets(labels, names)
    out = macro_auc(scores, targets, names)
    out.update(n_samples=len(labels), n_unlabelled=n_unlabelled, outside_labels=outside, class_names=names)
    return out
