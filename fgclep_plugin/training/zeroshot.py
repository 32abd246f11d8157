"""ECG zero-shot check during training: the replacement for open_clip's ImageNet zero-shot hook.

The labelled set of ``--ecg-zeroshot-data`` is loaded next to the training data (:func:`get_zero_shot_data`)
and scored by :func:`ecg_zero_shot_eval` at open_clip's zero-shot schedule, through the one zero-shot scoring
path, :func:`fgclep_plugin.model.zeroshot.zero_shot_auc`, at the run's ``--precision``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

from open_clip import get_tokenizer

from ..ecgdata.labels import labels_from_meta
from ..ecgdata.reader import iter_samples
from ..model.device import choose_device
from ..model.zeroshot import ECG_TEMPLATES, default_prompt_text, mapped_prompt_text, zero_shot_auc
from .pipeline import get_ecg_labelled_loader

log = logging.getLogger(__name__)

DATA_KEY = "ecg-zeroshot"
"""Key of the labelled zero-shot loader in open_clip's ``data`` dict."""


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
    ``prompts`` maps class names to the text put into the templates (others: ``default_prompt_text``)."""
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
    open_clip's eval metrics. Unlabelled samples are dropped unless ``--ecg-zeroshot-keep-unlabelled``; labels
    outside ``--ecg-zeroshot-classes`` are logged with their numbers of samples.
    """
    if DATA_KEY not in data or not args.zeroshot_frequency:
        return {}
    if epoch % args.zeroshot_frequency != 0 and epoch != args.epochs:
        return {}
    model = model.module if hasattr(model, "module") else model
    tokenizer = tokenizer or get_tokenizer(args.model)
    zs = data[DATA_KEY]
    drop = not getattr(args, "ecg_zeroshot_keep_unlabelled", False)
    device = choose_device(args.device)  # open_clip's device of this process (cuda:LOCAL_RANK or cpu)
    result = zero_shot_auc(
        model,
        tokenizer,
        zs.dataloader,
        class_names=zs.class_names,
        templates=zs.templates,
        prompt_text=zs.prompt_text,
        device=device,
        precision=args.precision,
        drop_unlabelled=drop,
    )
    log.info(
        "ECG zero-shot (epoch %d on %s, %d samples; %d samples without a label %s): macro AUC %.4f; per class %s; "
        "skipped (one outcome) %s; labels outside the classes %s",
        epoch,
        device,
        result["n_samples"],
        result["n_unlabelled"],
        "dropped" if drop else "counted as negatives",
        result["auc"],
        {k: round(v, 4) for k, v in result["per_class"].items()},
        result["skipped"],
        result["outside_labels"] or "none",
    )
    return {
        "ecg-zeroshot-auc": result["auc"],
        "ecg-zeroshot-classes": float(len(result["per_class"])),
        "ecg-zeroshot-unlabelled": float(result["n_unlabelled"]),
    }
