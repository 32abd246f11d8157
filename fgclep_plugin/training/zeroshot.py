"""ECG zero-shot classification: class prompt embeddings vs ECG embeddings, macro AUC over present classes.

The core, :func:`zero_shot_auc`, works on any model with ``encode_image``/``encode_text`` (an open_clip model
built from an FGCLEP config) and any iterable of ``(ecg batch, [labels per sample])``; training uses it through
:func:`ecg_zero_shot_eval`, the replacement for open_clip's ImageNet zero-shot hook, and evaluation can call it
directly. Class prompt embeddings come from open_clip's ``build_zero_shot_classifier``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from open_clip import build_zero_shot_classifier
from sklearn.metrics import roc_auc_score

from ..model.scoring import embed_ecgs

log = logging.getLogger(__name__)

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


DATA_KEY = "ecg-zeroshot"
"""Key of the labelled zero-shot loader in open_clip's ``data`` dict."""


def labels_from_meta(meta: dict[str, Any], key: str) -> list[str]:
    """Class names of one sample from its shard metadata ``meta["labels"][key]``.

    A list of names gives those names; a single string gives one; a ``{name: flag}`` dict gives the names whose
    flag is true (``1``, ``True``; ``0``, ``False``, ``None``, ``""`` are absent); missing or empty gives no
    class. Anything else raises ``ValueError`` naming the record. (Converters store present classes in one of
    these forms: PTB-XL's ``scp_codes``, where likelihood 0.0 still means present, is stored as a list.)
    """
    value = (meta.get("labels") or {}).get(key)
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if str(v)]
    if isinstance(value, dict):
        return [str(k) for k, v in value.items() if v]
    raise ValueError(
        f"record {meta.get('record_id', '?')}: labels[{key!r}] is {type(value).__name__}, "
        "expected a class name, a list of names or a {name: flag} dict"
    )


def macro_auc(scores: np.ndarray, targets: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Macro ROC AUC over classes that have both positive and negative samples.

    ``scores``/``targets``: ``[N, C]``. Returns ``auc`` (nan if no class qualifies), ``per_class`` and
    ``skipped`` (classes with a single target value).
    """
    per_class, skipped = {}, []
    for c, name in enumerate(class_names):
        if 0 < targets[:, c].sum() < len(targets):
            per_class[name] = float(roc_auc_score(targets[:, c], scores[:, c]))
        else:
            skipped.append(name)
    auc = float(np.mean(list(per_class.values()))) if per_class else float("nan")
    return {"auc": auc, "per_class": per_class, "skipped": skipped}


@torch.no_grad()
def zero_shot_auc(
    model: torch.nn.Module,
    tokenizer: Callable,
    loader: Iterable[tuple[torch.Tensor, list[list[str]]]],
    class_names: Sequence[str] | None = None,
    templates: Sequence[str] = ECG_TEMPLATES,
    device: str | torch.device = "cpu",
    autocast: Callable[[], Any] = nullcontext,
    input_dtype: torch.dtype | None = None,
    prompt_text: Callable[[str], str] = default_prompt_text,
    drop_unlabelled: bool = True,
) -> dict[str, Any]:
    """Zero-shot macro AUC of ``model`` on labelled ECGs.

    ``loader`` yields ``(ecgs [B, leads, L] already transformed, labels)`` with one list of class names per
    sample. ``class_names`` defaults to the sorted union of the labels seen; ``prompt_text(name)`` is put into
    the templates (default: underscores read as spaces). Scores are cosine similarities
    between the ECG embedding and each class's prompt embedding (open_clip's ``build_zero_shot_classifier``
    over ``templates``); a shared sigmoid scale and bias would not change the AUC. Samples without any label
    are dropped (the PTB-XL benchmark protocol) unless ``drop_unlabelled=False`` counts them as negatives of
    every class. Returns ``auc`` (macro over classes present with both outcomes), ``per_class``, ``skipped``,
    ``n_samples`` (samples scored), ``n_unlabelled`` (samples without a label), ``class_names``.
    """
    labels: list[list[str]] = []

    def ecg_batches():
        for ecg, batch_labels in loader:
            labels.extend(list(lab) for lab in batch_labels)
            yield ecg

    ecg_emb = embed_ecgs(model, ecg_batches(), device=device, autocast=autocast, input_dtype=input_dtype)
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
    was_training = model.training
    model.eval()
    try:
        with autocast():
            classifier = build_zero_shot_classifier(
                model,
                tokenizer=tokenizer,
                classnames=[prompt_text(n) for n in names],
                templates=list(templates),
                num_classes_per_batch=10,
                device=device,
            )
    finally:
        model.train(was_training)
    scores = (ecg_emb @ classifier.float().cpu()).numpy()
    index = {n: i for i, n in enumerate(names)}
    targets = np.zeros((len(labels), len(names)), dtype=np.int64)
    for row, lab in enumerate(labels):
        for c in lab:
            if c in index:
                targets[row, index[c]] = 1
    out = macro_auc(scores, targets, names)
    out.update(n_samples=len(labels), n_unlabelled=n_unlabelled, class_names=names)
    return out


@dataclass
class ZeroShotData:
    """The labelled zero-shot set as it sits in open_clip's ``data`` dict."""

    dataloader: Iterable
    class_names: list[str] | None = None
    templates: Sequence[str] = ECG_TEMPLATES
    prompt_text: Callable[[str], str] = default_prompt_text


def check_zero_shot_data(urls: str, label_key: str, n: int = 64) -> None:
    """Fail early on a zero-shot set training could not evaluate: unreadable shards, no samples, or none of the
    first ``n`` samples having ``labels[label_key]``; the ``ValueError`` names the shards and the keys found."""
    import itertools

    from ..ecgdata.reader import iter_samples

    metas = [s["meta"] for s in itertools.islice(iter_samples(urls), n)]
    if not metas:
        raise ValueError(f"zero-shot set {urls}: no samples")
    found = {k for m in metas for k in (m.get("labels") or {})}
    if label_key not in found:
        raise ValueError(
            f"zero-shot set {urls}: no label {label_key!r} in its first {len(metas)} samples; "
            f"labels there: {sorted(found)}"
        )


def get_zero_shot_data(
    urls: str,
    preprocess: Callable,
    label_key: str,
    batch_size: int = 64,
    class_names: Sequence[str] | None = None,
    workers: int = 0,
    prompts: Mapping[str, str] | None = None,
) -> ZeroShotData:
    """Loader of ``(ecg batch, labels)`` over labelled shards ``urls`` with labels from ``labels[label_key]``;
    ``prompts`` maps class names to the text put into the templates (others: :func:`default_prompt_text`)."""
    from .pipeline import get_ecg_labelled_loader

    loader = get_ecg_labelled_loader(
        urls, preprocess, batch_size, partial(labels_from_meta, key=label_key), workers=workers
    )
    prompt_text = partial(mapped_prompt_text, dict(prompts)) if prompts else default_prompt_text
    return ZeroShotData(loader, list(class_names) if class_names else None, prompt_text=prompt_text)


def ecg_zero_shot_eval(
    model, data: dict, epoch: int, args, tokenizer: Callable | None = None
) -> dict[str, float]:
    """Drop-in for ``open_clip_train.train.zero_shot_eval``: ECG zero-shot AUC on ``data["ecg-zeroshot"]``.

    Runs when open_clip would run its ImageNet zero-shot (every ``--zeroshot-frequency`` epochs and at the
    last epoch) and returns ``{"ecg-zeroshot-auc", "ecg-zeroshot-classes", "ecg-zeroshot-unlabelled"}`` for
    open_clip's eval metrics. Unlabelled samples are dropped unless ``--ecg-zeroshot-keep-unlabelled``.
    """
    if DATA_KEY not in data or not args.zeroshot_frequency:
        return {}
    if epoch % args.zeroshot_frequency != 0 and epoch != args.epochs:
        return {}
    from open_clip import get_input_dtype, get_tokenizer
    from open_clip_train.precision import get_autocast

    model = model.module if hasattr(model, "module") else model
    tokenizer = tokenizer or get_tokenizer(args.model)
    device = torch.device(args.device)
    zs = data[DATA_KEY]
    drop = not getattr(args, "ecg_zeroshot_keep_unlabelled", False)
    result = zero_shot_auc(
        model,
        tokenizer,
        zs.dataloader,
        class_names=zs.class_names,
        templates=zs.templates,
        prompt_text=zs.prompt_text,
        device=device,
        autocast=get_autocast(args.precision, device_type=device.type),
        input_dtype=get_input_dtype(args.precision),
        drop_unlabelled=drop,
    )
    log.info(
        "ECG zero-shot (epoch %d, %d samples; %d samples without a label %s): macro AUC %.4f; per class %s; "
        "skipped (one outcome) %s",
        epoch,
        result["n_samples"],
        result["n_unlabelled"],
        "dropped" if drop else "counted as negatives",
        result["auc"],
        {k: round(v, 4) for k, v in result["per_class"].items()},
        result["skipped"],
    )
    return {
        "ecg-zeroshot-auc": result["auc"],
        "ecg-zeroshot-classes": float(len(result["per_class"])),
        "ecg-zeroshot-unlabelled": float(result["n_unlabelled"]),
    }
