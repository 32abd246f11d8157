"""The model side of the plugin in open_clip: packaged model configs, the ECG tower, ECG transforms, offline
text towers.

Each hook names the open_clip attribute it replaces, what the replacement does and why. Replacements fall
through to the original for anything that is not an FG-CLEP model, so image models keep working in the
same process. ``register()`` is idempotent; importing this module registers.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import os
from collections.abc import Callable
from contextvars import ContextVar
from copy import deepcopy
from pathlib import Path
from typing import Any

import open_clip
import open_clip.factory
import open_clip.hf_configs
import open_clip.model

from .tower import EcgTower, build_ecg_tower, is_ecg_vision_cfg
from .transform import ecg_transforms

_PACKAGE_DIR = Path(__file__).resolve().parents[1]

PKG_PREFIX = "pkg:"
"""Config placeholder ``pkg:<package>/<path>``: a directory inside an installed Python package."""

FOLDER_PREFIX = "folder:"
"""Config placeholder ``folder:<path>``: a path inside the ``local-dir:`` folder the config is loaded from.
``fgclep export`` names the text tower ``folder:.`` (its ``config.json`` and tokenizer files are in the folder),
so an exported folder loads wherever it is copied to; resolved by the text-tower hook below."""

LOCAL_DIR_SCHEMA = "local-dir:"  # open_clip.factory.LOCAL_DIR_PREFIX

_ORIGINALS: dict[tuple[str, str], Any] = {}

# The local-dir: folder open_clip's create_model is building a model from (None: a model name or hf-hub:).
_LOADING_DIR: ContextVar[str | None] = ContextVar("fgclep_loading_dir", default=None)


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


def resolve_folder_path(value: str, folder: str | None) -> str:
    """``"folder:<sub/path>"`` -> ``folder/sub/path`` (``folder``: the ``local-dir:`` folder being loaded);
    other values unchanged. ``FileNotFoundError`` when there is no such folder (the config was not loaded
    through ``local-dir:``) or the path does not exist in it."""
    if not isinstance(value, str) or not value.startswith(FOLDER_PREFIX):
        return value
    if folder is None:
        raise FileNotFoundError(
            f"model config names its text tower {value!r}, a path inside an exported folder: load the folder "
            f"with open_clip's {LOCAL_DIR_SCHEMA}FOLDER"
        )
    path = os.path.normpath(os.path.join(os.path.abspath(folder), value[len(FOLDER_PREFIX) :]))
    if not os.path.exists(path):
        raise FileNotFoundError(f"{value}: {path} does not exist in the folder {folder}")
    return path


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


# Hook: open_clip.model._build_text_tower.
# CLIP and CustomTextCLIP look it up at call time to build `model.text`; a Hugging Face tower is built from
# `text_cfg.hf_model_name`. An exported folder's config (open_clip reads it itself, without get_model_config)
# names the tower `folder:.`; it is resolved here against the `local-dir:` folder being loaded (remembered by
# the create_model hook), `pkg:` placeholders too. Other names go to the original builder unchanged.
def _build_text_tower(embed_dim: int, text_cfg: Any, quick_gelu: bool = False, cast_dtype: Any = None):
    name = (
        text_cfg.get("hf_model_name")
        if isinstance(text_cfg, dict)
        else getattr(text_cfg, "hf_model_name", None)
    )
    resolved = resolve_package_path(resolve_folder_path(name, _LOADING_DIR.get())) if name else name
    if resolved != name:
        if isinstance(text_cfg, dict):
            text_cfg = {**text_cfg, "hf_model_name": resolved}
        else:
            text_cfg = dataclasses.replace(text_cfg, hf_model_name=resolved)
    return _ORIGINALS[("open_clip.model", "_build_text_tower")](embed_dim, text_cfg, quick_gelu, cast_dtype)


# Hook: open_clip.factory.create_model (and the open_clip re-export; create_model_and_transforms and
# create_model_from_pretrained call it by its module name). For `local-dir:FOLDER` it remembers FOLDER while
# the original builds the model, so the text-tower hook can resolve `folder:` paths; nothing else changes.
def _create_model(model_name: str, *args: Any, **kwargs: Any):
    folder = (
        model_name[len(LOCAL_DIR_SCHEMA) :]
        if isinstance(model_name, str) and model_name.startswith(LOCAL_DIR_SCHEMA)
        else None
    )
    token = _LOADING_DIR.set(folder)
    try:
        return _ORIGINALS[("open_clip.factory", "create_model")](model_name, *args, **kwargs)
    finally:
        _LOADING_DIR.reset(token)


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


SUPPORTED_OPEN_CLIP = "open_clip_torch>=3.3.0,<4"


def check_symbol(module: Any, name: str, params: tuple[str, ...] = (), exact: bool = False) -> None:
    """Fail with one message naming open_clip's version and the symbol when the attribute ``name`` of
    ``module``, which a hook replaces, is missing or does not take ``params`` first (``exact``: only those).

    The hooks pass their arguments through by position, so a renamed or reordered open_clip function would
    otherwise break somewhere deep in a training run."""
    where = f"{module.__name__}.{name}"
    obj = getattr(module, name, None)
    if obj is None:
        problem = "does not exist"
    else:
        try:
            got = tuple(inspect.signature(obj).parameters)
        except (TypeError, ValueError):  # not introspectable: nothing to compare
            return
        if (got if exact else got[: len(params)]) == params:
            return
        problem = (
            f"takes ({', '.join(got)}); the plugin expects ({', '.join(params)}{'' if exact else ', ...'})"
        )
    raise RuntimeError(
        f"open_clip {getattr(open_clip, '__version__', '?')} is not supported by fgclep_plugin: {where} "
        f"{problem} (supported: {SUPPORTED_OPEN_CLIP})"
    )


_MODEL_HOOKS: list[tuple[Any, str, Callable[..., Any], tuple[Any, ...], tuple[str, ...]]] = [
    # (module, attribute, replacement, other modules that re-export it, the leading parameters it must take)
    (
        open_clip.model,
        "_build_vision_tower",
        _build_vision_tower,
        (),
        ("embed_dim", "vision_cfg", "quick_gelu", "cast_dtype"),
    ),
    (
        open_clip.model,
        "_build_text_tower",
        _build_text_tower,
        (),
        ("embed_dim", "text_cfg", "quick_gelu", "cast_dtype"),
    ),
    (open_clip.factory, "get_model_config", _get_model_config, (open_clip,), ("model_name",)),
    (open_clip.factory, "create_model", _create_model, (open_clip,), ("model_name",)),
    (
        open_clip.factory,
        "create_model_and_transforms",
        _create_model_and_transforms,
        (open_clip,),
        ("model_name",),
    ),
    (
        open_clip.factory,
        "create_model_from_pretrained",
        _create_model_from_pretrained,
        (open_clip,),
        ("model_name",),
    ),
]


def _install(
    module: Any,
    name: str,
    replacement: Callable[..., Any],
    reexports: tuple[Any, ...],
    params: tuple[str, ...],
) -> None:
    key = (module.__name__, name)
    current = getattr(module, name, None)
    if current is replacement:
        return
    check_symbol(module, name, params)
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
    check_symbol(open_clip.hf_configs, "arch_dict")  # it must exist
    names = open_clip.hf_configs.arch_dict.get("bert", {}).get("config_names")
    if names is not None:
        names.setdefault("layer_attr", "layer")  # BertModel.encoder.layer
        names.setdefault("token_embeddings_attr", "embeddings")  # BertModel.embeddings


def register_model_hooks() -> None:
    """Add the packaged model configs to open_clip and install the model-side hooks (idempotent)."""
    configs = config_dir()
    if configs not in open_clip.factory._MODEL_CONFIG_PATHS:
        open_clip.add_model_config(configs)
    for module, name, replacement, reexports, params in _MODEL_HOOKS:
        _install(module, name, replacement, reexports, params)
    _complete_bert_arch()


def register() -> None:
    """Make open_clip FG-CLEP aware: model configs, ECG tower, ECG transforms, offline tokenizers."""
    register_model_hooks()


# Importing this module registers the plugin (cheap: open_clip is imported above). This covers
# `import fgclep_plugin.model.registry` before open_clip: the package's import hook then skips registering, because
# this module is still half-imported when open_clip finishes importing.
register()
