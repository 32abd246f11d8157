"""The training hooks: what ``python -m fgclep_plugin.train`` changes in open_clip_train for one run.

The model side (configs, ECG tower, ECG transforms, offline text towers) is registered by
:mod:`fgclep_plugin.model.registry`, which importing this module imports. Each hook below names the
open_clip_train attribute it replaces, what the replacement does and why.
"""

from __future__ import annotations

import json
from typing import Any

import open_clip
import open_clip_train.main as oc_main
import open_clip_train.train as oc_train
import torch

from ..model import loss as model_loss
from ..model.registry import check_symbol, register
from ..model.zeroshot import load_prompt_map
from .pipeline import get_ecg_data
from .zeroshot import DATA_KEY, check_zero_shot_data, ecg_zero_shot_eval, get_zero_shot_data

# Each hook replaces one attribute that open_clip_train looks up at call time, for the duration of one run
# (restored afterwards); nothing else of open_clip's loop (resume, pretrained, precision, accumulation,
# checkpoints, logs) is touched.


def _hook_parse_args(open_clip_parse_args, plugin_args):
    """Replaces ``open_clip_train.main.parse_args``: open_clip parses strictly, so the plugin's flags were parsed
    first; they are attached to open_clip's namespace so every later hook (and params.txt) sees them."""

    def parse_args(argv):
        args = open_clip_parse_args(argv)
        for name, value in vars(plugin_args).items():
            setattr(args, name, value)
        return args

    return parse_args


def _hook_create_model(plugin_args):
    """Replaces ``open_clip_train.main.create_model_and_transforms``: ``--init-logit-scale/--init-logit-bias``
    override the config's values and ``--siglip``'s fixed (log 10, -10); -10 suits batches of ~10-30 k only."""

    def create_model_and_transforms(*args, **kwargs):
        for name in ("init_logit_scale", "init_logit_bias"):
            if getattr(plugin_args, name, None) is not None:
                kwargs[name] = getattr(plugin_args, name)
        model, *transforms = open_clip.create_model_and_transforms(*args, **kwargs)
        if getattr(plugin_args, "ecg_feature_injection", "append") == "multi-positive":
            from .injection import split_positives  # only this mode wraps the forward

            split_positives(model)
        return (model, *transforms)

    return create_model_and_transforms


class _EvalData(dict):
    """open_clip's ``main`` calls ``evaluate`` only when ``val`` or an ImageNet set is in ``data``; with an ECG
    zero-shot set, ``"imagenet-val" in data`` answers True so that evaluation (and our zero-shot hook) runs."""

    def __contains__(self, key):
        return super().__contains__(key) or (key == "imagenet-val" and super().__contains__(DATA_KEY))


def _hook_get_data(args, preprocess_fns, epoch=0, tokenizer=None):
    """Replaces ``open_clip_train.main.get_data``: ECG shards (``npy``+``txt``) instead of images, through
    webdataset's own tar reader (open_clip's chokes on webdataset 1.x's end-of-shard marker); adds the
    labelled ECG zero-shot set of ``--ecg-zeroshot-data``."""
    data = _EvalData(get_ecg_data(args, preprocess_fns, epoch=epoch, tokenizer=tokenizer))
    if getattr(args, "ecg_zeroshot_data", None):
        # checked now, not at the first evaluation after a whole epoch of training
        check_zero_shot_data(args.ecg_zeroshot_data, args.ecg_zeroshot_label_key)
        classes = None
        if args.ecg_zeroshot_classes:
            classes = [c.strip() for c in args.ecg_zeroshot_classes.split(",") if c.strip()]
        prompt_file = getattr(args, "ecg_zeroshot_prompts", None)
        data[DATA_KEY] = get_zero_shot_data(
            args.ecg_zeroshot_data,
            preprocess_fns[1],
            args.ecg_zeroshot_label_key,
            batch_size=args.batch_size,
            class_names=classes,
            # open_clip's --workers: decoding overlaps the encoder, as in training
            workers=getattr(args, "workers", 0),
            prompts=load_prompt_map(prompt_file) if prompt_file else None,
        )
    return data


class _LossRecorder:
    """Wraps the loss to append one row per optimiser step of this process to ``<--loss-log>-rank<r>.jsonl``:
    open_clip's own ``epoch`` (0-based, as ``train_one_epoch`` gets it) and ``step`` (global, as its LR scheduler
    gets it) and each loss term, averaged over the ``--accum-freq`` micro-batch calls of that step.

    The numbering comes from the loop (:func:`_hook_train_one_epoch` calls :meth:`start_epoch`), not from counting
    rows: a run resumed after a crash in the middle of an epoch re-runs that epoch from its first step, and its rows
    repeat the dead run's (epoch, step) pairs instead of shifting every later step. Readers keep the last row of
    each step (``fgclep_plugin.demo.read_curve``).
    """

    def __init__(self, loss, path: str, rank: int):
        self.loss, self.path = loss, f"{path}-rank{rank}.jsonl"
        self.epoch: int | None = None
        self.first_step, self.accum_freq, self.calls, self.pending = 0, 1, 0, []

    def start_epoch(self, epoch: int, num_batches: int, accum_freq: int) -> None:
        """Called as open_clip starts ``epoch``: its steps are ``num_batches // accum_freq * epoch + i``."""
        self.epoch, self.accum_freq = epoch, accum_freq
        self.first_step, self.calls, self.pending = num_batches // accum_freq * epoch, 0, []

    def __call__(self, *args, **kwargs):
        if self.epoch is None:
            raise RuntimeError("loss log: the loss was called outside open_clip's train_one_epoch")
        out = self.loss(*args, **kwargs)
        terms = out if isinstance(out, dict) else {"loss": out}
        self.pending.append({k: float(v.detach()) for k, v in terms.items()})
        self.calls += 1
        if len(self.pending) == self.accum_freq:  # the last micro-batch of this optimiser step
            step = self.first_step + (self.calls - 1) // self.accum_freq
            mean = {k: sum(p[k] for p in self.pending) / len(self.pending) for k in self.pending[0]}
            with open(self.path, "a") as f:
                f.write(json.dumps({"epoch": self.epoch, "step": step, **mean}) + "\n")
            self.pending = []
        return out


def _hook_train_one_epoch(open_clip_train_one_epoch):
    """Replaces ``open_clip_train.main.train_one_epoch``: tells the ``--loss-log`` recorder which epoch starts and
    how the loop numbers its steps, then runs open_clip's epoch unchanged."""

    def train_one_epoch(
        model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, tb_writer=None
    ):
        if isinstance(loss, _LossRecorder):
            loss.start_epoch(epoch, data["train"].dataloader.num_batches, args.accum_freq)
        return open_clip_train_one_epoch(
            model, data, loss, epoch, optimizer, scaler, scheduler, dist_model, args, tb_writer=tb_writer
        )

    return train_one_epoch


def _hook_create_loss(args):
    """Replaces ``open_clip_train.main.create_loss``: FG-CLEP's SigLIP + FNM loss (``create_fgclep_loss``, looked
    up at call time, as open_clip_train looks up the hooks)."""
    loss = model_loss.create_fgclep_loss(args)
    return _LossRecorder(loss, args.loss_log, args.rank) if getattr(args, "loss_log", None) else loss


def _cpu_safe_ddp():
    """Replaces ``torch.nn.parallel.DistributedDataParallel`` while open_clip's ``main`` runs: main passes
    ``device_ids=[device]`` even for CPU, which DDP rejects; a CPU module gets ``device_ids=None``."""
    ddp = torch.nn.parallel.DistributedDataParallel

    class CpuSafeDistributedDataParallel(ddp):
        def __init__(self, module, device_ids=None, *args, **kwargs):
            if device_ids and all(torch.device(d).type == "cpu" for d in device_ids):
                device_ids = None
            super().__init__(module, device_ids, *args, **kwargs)

    return CpuSafeDistributedDataParallel


# The open_clip_train attributes the hooks replace and the leading parameters the hooks pass through to them
# (train_one_epoch: all ten, by position); checked when the hooks are installed.
TRAINING_SYMBOLS: tuple[tuple[Any, str, tuple[str, ...], bool], ...] = (
    (oc_main, "parse_args", ("args",), False),
    (oc_main, "create_model_and_transforms", (), False),  # may already be model.registry's (*args) hook
    (oc_main, "get_data", ("args", "preprocess_fns", "epoch", "tokenizer"), False),
    (oc_main, "create_loss", ("args",), False),
    (
        oc_main,
        "train_one_epoch",
        (
            "model",
            "data",
            "loss",
            "epoch",
            "optimizer",
            "scaler",
            "scheduler",
            "dist_model",
            "args",
            "tb_writer",
        ),
        True,
    ),
    (oc_train, "zero_shot_eval", ("model", "data", "epoch", "args", "tokenizer"), False),
)


def check_training_symbols() -> None:
    """Fail with one message naming open_clip's version and the symbol when an attribute the training hooks
    replace is missing or takes other parameters (:func:`fgclep_plugin.model.registry.check_symbol`)."""
    for module, name, params, exact in TRAINING_SYMBOLS:
        check_symbol(module, name, params, exact)


class training_hooks:  # lower case: used like contextlib's context managers
    """Context manager installing the training hooks above for one ``open_clip_train.main.main`` call."""

    def __init__(self, plugin_args):
        self.plugin_args = plugin_args
        self.saved: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> None:
        register()  # the model side must be in place: the hooks below wrap open_clip's hooked factory
        check_training_symbols()
        # create_model_and_transforms: wrap open_clip's current one (model.registry's hook), not the original
        # that open_clip_train.main imported before register() ran.
        patches = [
            (oc_main, "parse_args", _hook_parse_args(oc_main.parse_args, self.plugin_args)),
            (oc_main, "create_model_and_transforms", _hook_create_model(self.plugin_args)),
            (oc_main, "get_data", _hook_get_data),
            (oc_main, "create_loss", _hook_create_loss),
            (oc_main, "train_one_epoch", _hook_train_one_epoch(oc_main.train_one_epoch)),
            (oc_train, "zero_shot_eval", ecg_zero_shot_eval),
            (torch.nn.parallel, "DistributedDataParallel", _cpu_safe_ddp()),
        ]
        for mod, name, value in patches:
            self.saved.append((mod, name, getattr(mod, name)))
            setattr(mod, name, value)

    def __exit__(self, *exc: object) -> None:
        for mod, name, value in reversed(self.saved):
            setattr(mod, name, value)
        self.saved.clear()
