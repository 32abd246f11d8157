"""Every hook the plugin puts into open_clip, gathered in one place.

Each hook names the open_clip attribute it replaces, what the replacement does and why. Replacements fall
through to the original for anything that is not an FG-CLEP model, so image models keep working in the
same process. ``register()`` is idempotent.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from copy import deepcopy
from pathlib import Path
from typing import Any

import open_clip
import open_clip.factory
import open_clip.hf_configs
import open_clip.model

from ..model.tower import EcgTower, build_ecg_tower, is_ecg_vision_cfg
from ..model.transform import ecg_transforms

# =====================================================================================================
# Model side: model configs, ECG tower, ECG transforms, offline text towers.
# =====================================================================================================

_PACKAGE_DIR = Path(__file__).resolve().parents[1]

PKG_PREFIX = "pkg:"
"""Config placeholder ``pkg:<package>/<path>``: a directory inside an installed Python package."""

_ORIGINALS: dict[tuple[str, str], Any] = {}


def config_dir() -> Path:
    """Directory of the packaged model configs: ``fgclep_plugin/model_configs`` when installed from a wheel,
    the repository's ``model_configs`` in a source checkout or editable install."""
    for candidate in (_PACKAGE_DIR / "model_configs", _PACKAGE_DIR.parent / "model_configs"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"fgclep_plugin model_configs directory not found beside {_PACKAGE_DIR}")


def resolve_package_path(value: str) -> str:
    """``"pkg:<package>/<sub/path>"`` -> absolute path inside the installed package; other values unchanged.

    The package is located without importing it. Raises ``FileNotFoundError`` naming the package when it is
    not installed or the path does not exist in it.
    """
    if not isinstance(value, str) or not value.startswith(PKG_PREFIX):
        return value
    package, _, sub = value[len(PKG_PREFIX) :].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model config needs the Python package {package!r} ({value}); pip install it"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / sub
    if not path.exists():
        raise FileNotFoundError(f"{value}: {path} does not exist in the installed package {package!r}")
    return str(path)


def resolve_model_config(cfg: dict[str, Any] | None) -> dict[str, Any] | None:
    """Copy of a model config with ``pkg:`` placeholders in ``text_cfg`` resolved to installed paths."""
    if cfg is None:
        return None
    cfg = deepcopy(cfg)
    text_cfg = cfg.get("text_cfg", {})
    for key in ("hf_model_name", "hf_tokenizer_name"):
        if key in text_cfg:
            text_cfg[key] = resolve_package_path(text_cfg[key])
    return cfg


def is_ecg_model(model: Any) -> bool:
    """True for an open_clip model whose vision tower is the ECG tower."""
    return isinstance(getattr(model, "visual", None), EcgTower)


# Hook: open_clip.model._build_vision_tower.
# CLIP and CustomTextCLIP look this module-level function up at call time to build `model.visual`. A
# vision_cfg carrying the `ecg_tower` key builds the 1D ResNet ECG tower (image dataclasses cannot hold
# ECG settings); every other vision_cfg goes to open_clip's original builder.
def _build_vision_tower(embed_dim: int, vision_cfg: Any, quick_gelu: bool = False, cast_dtype: Any = None):
    if is_ecg_vision_cfg(vision_cfg):
        return build_ecg_tower(embed_dim, vision_cfg)
    return _ORIGINALS[("open_clip.model", "_build_vision_tower")](
        embed_dim, vision_cfg, quick_gelu, cast_dtype
    )


# Hook: open_clip.factory.get_model_config (and its re-export open_clip.get_model_config).
# create_model and get_tokenizer read configs through it. Our offline configs name their HF text tower
# and tokenizer as `pkg:<package>/<dir>` because the directory depends on where the package is
# installed; the hook returns the config with those resolved to local paths, so neither the model nor
# the tokenizer ever asks the hub. Configs without placeholders come back unchanged.
def _get_model_config(model_name: str):
    return resolve_model_config(_ORIGINALS[("open_clip.factory", "get_model_config")](model_name))


# Hook: open_clip.factory.create_model_and_transforms (and the open_clip re-export).
# open_clip builds torchvision image transforms from the tower's image preprocess config; for an ECG
# model the (train, val) transforms are the ECG transforms described by the tower's vision_cfg instead.
def _create_model_and_transforms(*args: Any, **kwargs: Any):
    model, preprocess_train, preprocess_val = _ORIGINALS[
        ("open_clip.factory", "create_model_and_transforms")
    ](*args, **kwargs)
    if is_ecg_model(model):
        preprocess_train, preprocess_val = ecg_transforms(model.visual.cfg)
    return model, preprocess_train, preprocess_val


# Hook: open_clip.factory.create_model_from_pretrained (and the open_clip re-export).
# Same reason as above: its returned `preprocess` must be the ECG (val) transform for ECG models.
def _create_model_from_pretrained(*args: Any, **kwargs: Any):
    out = _ORIGINALS[("open_clip.factory", "create_model_from_pretrained")](*args, **kwargs)
    if isinstance(out, tuple) and is_ecg_model(out[0]):
        return out[0], ecg_transforms(out[0].visual.cfg)[1]
    return out


_MODEL_HOOKS: list[tuple[Any, str, Callable[..., Any], tuple[Any, ...]]] = [
    # (module, attribute, replacement, other modules that re-export the same attribute)
    (open_clip.model, "_build_vision_tower", _build_vision_tower, ()),
    (open_clip.factory, "get_model_config", _get_model_config, (open_clip,)),
    (open_clip.factory, "create_model_and_transforms", _create_model_and_transforms, (open_clip,)),
    (open_clip.factory, "create_model_from_pretrained", _create_model_from_pretrained, (open_clip,)),
]


def _install(module: Any, name: str, replacement: Callable[..., Any], reexports: tuple[Any, ...]) -> None:
    key = (module.__name__, name)
    current = getattr(module, name)
    if current is replacement:
        return
    _ORIGINALS.setdefault(key, current)
    setattr(module, name, replacement)
    for other in reexports:
        if getattr(other, name, None) is _ORIGINALS[key]:
            setattr(other, name, replacement)


# Hook: open_clip.hf_configs.arch_dict["bert"]["config_names"] (two missing entries added, none replaced).
# HFTextEncoder.lock(unlocked_layers > 0), i.e. `--lock-text --lock-text-unlocked-layers N`, looks up where the
# encoder layers and the embeddings sit; open_clip lists that for RoBERTa-style models but not for BERT, so
# locking all but the last N layers of the MiniLM / Bio_ClinicalBERT towers failed with KeyError 'layer_attr'.
def _complete_bert_arch() -> None:
    names = open_clip.hf_configs.arch_dict.get("bert", {}).get("config_names")
    if names is not None:
        names.setdefault("layer_attr", "layer")  # BertModel.encoder.layer
        names.setdefault("token_embeddings_attr", "embeddings")  # BertModel.embeddings


def register_model_hooks() -> None:
    """Add the packaged model configs to open_clip and install the model-side hooks (idempotent)."""
    configs = config_dir()
    if configs not in open_clip.factory._MODEL_CONFIG_PATHS:
        open_clip.add_model_config(configs)
    for module, name, replacement, reexports in _MODEL_HOOKS:
        _install(module, name, replacement, reexports)
    _complete_bert_arch()


def register() -> None:
    """Make open_clip FG-CLEP aware: model configs, ECG tower, ECG transforms, offline tokenizers."""
    register_model_hooks()


# Importing this module registers the plugin (cheap: open_clip is imported above). This covers
# `import fgclep_plugin.training.hooks` before open_clip: the package's import hook then skips registering, because
# this module is still half-imported when open_clip finishes importing.
register()

# =====================================================================================================
# End of the model side.
# =====================================================================================================


# --- training hooks ---
# What ``python -m fgclep_plugin.train`` changes in open_clip_train, for the duration of one run (restored
# afterwards). Each hook replaces one attribute that open_clip_train looks up at call time; nothing else of
# open_clip's loop (resume, pretrained, precision, accumulation, checkpoints, logs) is touched.


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
        return open_clip.create_model_and_transforms(*args, **kwargs)

    return create_model_and_transforms


class _EvalData(dict):
    """open_clip's ``main`` calls ``evaluate`` only when ``val`` or an ImageNet set is in ``data``; with an ECG
    zero-shot set, ``"imagenet-val" in data`` answers True so that evaluation (and our zero-shot hook) runs."""

    def __contains__(self, key):
        from .zeroshot import DATA_KEY

        return super().__contains__(key) or (key == "imagenet-val" and super().__contains__(DATA_KEY))


def _hook_get_data(args, preprocess_fns, epoch=0, tokenizer=None):
    """Replaces ``open_clip_train.main.get_data``: ECG shards (``npy``+``txt``) instead of images, through
    webdataset's own tar reader (open_clip's chokes on webdataset 1.x's end-of-shard marker); adds the
    labelled ECG zero-shot set of ``--ecg-zeroshot-data``."""
    from .pipeline import get_ecg_data
    from .zeroshot import DATA_KEY, check_zero_shot_data, get_zero_shot_data, load_prompt_map

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
            import json

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
    """Replaces ``open_clip_train.main.create_loss``: FG-CLEP's SigLIP + FNM loss (``create_fgclep_loss``)."""
    from ..model.loss import create_fgclep_loss

    loss = create_fgclep_loss(args)
    return _LossRecorder(loss, args.loss_log, args.rank) if getattr(args, "loss_log", None) else loss


def _cpu_safe_ddp():
    """Replaces ``torch.nn.parallel.DistributedDataParallel`` while open_clip's ``main`` runs: main passes
    ``device_ids=[device]`` even for CPU, which DDP rejects; a CPU module gets ``device_ids=None``."""
    import torch

    ddp = torch.nn.parallel.DistributedDataParallel

    class CpuSafeDistributedDataParallel(ddp):
        def __init__(self, module, device_ids=None, *args, **kwargs):
            if device_ids and all(torch.device(d).type == "cpu" for d in device_ids):
                device_ids = None
            super().__init__(module, device_ids, *args, **kwargs)

    return CpuSafeDistributedDataParallel


class training_hooks:  # lower case: used like contextlib's context managers
    """Context manager installing the training hooks above for one ``open_clip_train.main.main`` call."""

    def __init__(self, plugin_args):
        self.plugin_args = plugin_args
        self.saved: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> None:
        import open_clip_train.main as oc_main
        import open_clip_train.train as oc_train
        import torch

        from .zeroshot import ecg_zero_shot_eval

        # create_model_and_transforms: wrap open_clip's current one (the model-side hook above), not the
        # original that open_clip_train.main imported before register() ran.
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
