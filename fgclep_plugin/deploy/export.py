"""``fgclep export``: a training checkpoint as the folder open_clip's hub loader reads (``local-dir:DIR``,
``hf-hub:REPO``), optionally uploaded to the Hugging Face Hub.

The folder (open_clip 3.3 ``factory.create_model`` / ``get_tokenizer`` read it):

- ``open_clip_config.json``: ``{"model_cfg", "preprocess_cfg", "fgclep"}``; ``model_cfg`` is the plugin's
  config with no ``pkg:`` placeholder and no path of this machine. For ``local-dir:`` open_clip reads the
  tokenizer from the folder itself but builds a Hugging Face text tower from ``text_cfg.hf_model_name``, so
  both ``hf_*_name`` entries are ``folder:.`` (:data:`fgclep_plugin.model.registry.FOLDER_PREFIX`): the
  plugin's text-tower hook resolves it to the folder being loaded, wherever it was copied to (the Hub copy
  names the repository instead: open_clip's ``hf_tokenizer_self``). ``fgclep`` records the model, the
  checkpoint (as ``RUN/checkpoints/epoch_N.pt`` inside its run folder, else its file name), its SHA-256 and
  epoch, the plugin version and the time;
- ``open_clip_model.safetensors``: the whole model's state dict (``_find_checkpoint_in_dir`` prefers it);
- the text tower's tokenizer files, and for a Hugging Face text tower its ``config.json`` (architecture
  only: its weights are in the safetensors file);
- ``README.md``: the model card (:mod:`.modelcard`).

Loading needs ``import fgclep_plugin`` first (the ECG tower, the transforms and the ``folder:`` text tower are
the plugin's hooks). The folder is written beside DIR and renamed into place: DIR is the old folder or the whole new one, never half-written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import shutil
import tempfile
import time
from copy import deepcopy
from pathlib import Path
from typing import Any

from ..cliargs import add_command, add_out_argument, package_version
from ..defaults import DEFAULT_MODEL
from ..ecgdata.outdir import check_writable_folder
from .modelcard import Source, find_results, model_card, read_results, run_folder

CONFIG_NAME = "open_clip_config.json"  # open_clip.constants.HF_CONFIG_NAME
WEIGHTS_NAME = "open_clip_model.safetensors"  # open_clip.constants.HF_SAFE_WEIGHTS_NAME
TEXT_CONFIG_NAME = "config.json"  # a Hugging Face model's architecture (AutoConfig.from_pretrained)
CARD_NAME = "README.md"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
TEXT_LOCATION_KEYS = ("hf_model_name", "hf_tokenizer_name")  # text_cfg entries that name files
# the folder being loaded: model.registry.FOLDER_PREFIX + "." (not imported here: registry imports open_clip,
# and the fgclep command imports this module to build its parser); tests check the two agree
EXPORT_FOLDER = "folder:."


def point_text_tower(model_cfg: dict[str, Any], location: str) -> dict[str, Any]:
    """Copy of ``model_cfg`` whose text tower and tokenizer (where the config names them) are read from
    ``location``: :data:`EXPORT_FOLDER` (the local folder, wherever it is) or a Hub repository id."""
    cfg = deepcopy(model_cfg)
    text = cfg.get("text_cfg", {})
    for key in TEXT_LOCATION_KEYS:
        if key in text:
            text[key] = location
    return cfg


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def _state_dict_mismatch(error: RuntimeError) -> str:
    """torch's multi-line ``load_state_dict`` error in one line: counts of missing / unexpected keys (first
    of each), the parameters of another shape, and any other message (the ECG tower's input check)."""
    parts = []
    for entry in str(error).split("\n\t")[1:]:
        entry = entry.strip()
        for head, what in (("Missing key(s)", "missing"), ("Unexpected key(s)", "unexpected")):
            if entry.startswith(head):
                keys = entry.split(": ", 1)[-1].split(", ")
                parts.append(f"{len(keys)} {what} keys (first {keys[0].strip('. ')})")
                break
        else:
            parts.append(entry.split(" copying a param")[0].rstrip(":"))
    return "; ".join(parts[:4]) + (f"; and {len(parts) - 4} more" if len(parts) > 4 else "")


def _key_mismatch(model: Any, state_dict: dict[str, Any]) -> str:
    """What differs between a model's state dict and a checkpoint's, in one line ('' when nothing does)."""
    want = model.state_dict()
    parts = []
    for what, keys in (
        ("missing", [k for k in want if k not in state_dict]),
        ("unexpected", [k for k in state_dict if k not in want]),
    ):
        if keys:
            parts.append(f"{len(keys)} {what} keys (first {keys[0]})")
    shaped = [k for k in want if k in state_dict and tuple(want[k].shape) != tuple(state_dict[k].shape)]
    if shaped:
        k = shaped[0]
        parts.append(
            f"{len(shaped)} of another shape (first {k}: {list(state_dict[k].shape)} vs {list(want[k].shape)})"
        )
    return "; ".join(parts)


def load_checked(name: str, checkpoint: Path):
    """``load_model(name, checkpoint)`` with its failures as one-line ``ValueError``s: an unknown model, a
    file torch cannot read, a state dict that does not fit the model config."""
    # imported here: the fgclep command imports this module to build its parser (start-up time)
    import open_clip
    from open_clip.factory import load_state_dict

    from ..model.registry import config_dir
    from ..model.scoring import load_model

    if open_clip.get_model_config(name) is None:  # get_model_config: the plugin's hook, registered by import
        ours = ", ".join(sorted(p.stem for p in config_dir().glob("*.json")))
        raise ValueError(f"unknown model {name!r} (fgclep models: {ours}; others: open_clip.list_models())")
    try:
        state_dict = load_state_dict(str(checkpoint), weights_only=True)  # open_clip's reading of the file
        if not isinstance(state_dict, dict) or not state_dict:
            raise ValueError("no state dict in it")
    except (
        RuntimeError,
        ValueError,
        KeyError,
        EOFError,
        OSError,
        StopIteration,
        pickle.UnpicklingError,
    ) as e:
        raise ValueError(
            f"cannot read checkpoint {checkpoint} as a PyTorch state dict ({_first_line(e)})"
        ) from e
    del state_dict  # load_model reads the file again (memory: one copy at a time)
    try:
        return load_model(name, str(checkpoint))
    except Exception as e:  # open_clip's conversions fail in many ways on a state dict of another model
        if isinstance(e, RuntimeError) and "Error(s) in loading state_dict" in str(e):
            detail = _state_dict_mismatch(e)  # torch's report, with the ECG tower's input check
        else:
            detail = _key_mismatch(load_model(name).model, load_state_dict(str(checkpoint))) or _first_line(e)
        raise ValueError(f"checkpoint {checkpoint} does not match model {name}: {detail}") from e


def checkpoint_epoch(checkpoint: Path) -> Any:
    """The ``epoch`` an open_clip training checkpoint records (``"unknown"`` for a bare state dict)."""
    import torch  # start-up time (load_checked)

    try:
        data = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # not a zip-format file: mmap is not available, read it whole
        data = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return data.get("epoch", "unknown") if isinstance(data, dict) else "unknown"


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_weights(model: Any, path: Path) -> None:
    """The model's state dict as safetensors; tensors sharing storage are cloned (safetensors refuses
    shared memory, and open_clip loads the file with ``strict=True``, so every key must be present)."""
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise RuntimeError("fgclep export writes safetensors weights: pip install safetensors") from None
    tensors, seen = {}, set()
    for key, value in model.state_dict().items():
        value = value.detach().cpu().contiguous()
        storage = value.untyped_storage().data_ptr()
        tensors[key] = value.clone() if storage in seen else value
        seen.add(storage)
    save_file(tensors, str(path), metadata={"format": "pt"})


def write_text_tower(loaded: Any, text_cfg: dict[str, Any], folder: Path) -> None:
    """Copy the offline text tower's tokenizer files (and a Hugging Face tower's ``config.json``) into
    ``folder``; a tower named by Hub id (already in the local cache) is saved from the loaded objects."""
    tokenizer_src = text_cfg.get("hf_tokenizer_name")
    if tokenizer_src and Path(tokenizer_src).is_dir():
        for name in TOKENIZER_FILES:
            if (Path(tokenizer_src) / name).is_file():
                shutil.copy2(Path(tokenizer_src) / name, folder / name)
    elif tokenizer_src:
        loaded.tokenizer.tokenizer.save_pretrained(str(folder))  # open_clip HFTokenizer -> transformers'
    model_src = text_cfg.get("hf_model_name")
    if model_src and (Path(model_src) / TEXT_CONFIG_NAME).is_file():
        shutil.copy2(Path(model_src) / TEXT_CONFIG_NAME, folder / TEXT_CONFIG_NAME)
    elif model_src:
        loaded.model.text.config.save_pretrained(str(folder))


def _strings(value: Any) -> list[str]:
    """Every string in a JSON-like value (dict values, list items), depth first."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


def open_clip_config(model_cfg: dict[str, Any], location: str, provenance: dict[str, Any]) -> dict[str, Any]:
    """``open_clip_config.json``'s content: the model config pointed at ``location`` (an ECG model has no
    image preprocessing: its transform is described by ``vision_cfg``), plus where it came from.
    ``RuntimeError`` if a ``pkg:`` placeholder or an absolute path is left (neither loads on another machine)."""
    cfg = {"model_cfg": point_text_tower(model_cfg, location), "preprocess_cfg": {}, "fgclep": provenance}
    left = [s for s in _strings(cfg) if s.startswith("pkg:")]
    if left:  # registry.resolve_model_config resolves text_cfg only: a placeholder elsewhere cannot load
        raise RuntimeError(f"the model config still names package paths after resolving: {', '.join(left)}")
    local = [s for s in _strings(cfg) if os.path.isabs(s)]
    if local:
        raise RuntimeError(f"the exported config would name paths of this machine: {', '.join(local)}")
    return cfg


def checkpoint_name(checkpoint: Path, run: Path | None) -> str:
    """How the config names the checkpoint: ``RUN/checkpoints/epoch_N.pt`` (the run folder's name and the path
    inside it), else the file name; never a path of this machine."""
    if run is not None and checkpoint.is_relative_to(run):
        return str(Path(run.name) / checkpoint.relative_to(run))
    return checkpoint.name


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValueError(f"{out} exists and is not empty (--force replaces it)")


def _make_public(folder: Path) -> None:
    """rwxr-xr-x folder, rw-r--r-- files: mkdtemp and safetensors create them private."""
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)


def _publish(stage: Path, out: Path) -> None:
    """Rename the finished ``stage`` folder to ``out``, replacing an existing ``out`` whole."""
    if out.is_dir() and any(out.iterdir()):
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(stage, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(stage, out)  # an empty folder is replaced by the rename


def export_model(
    checkpoint: str | Path,
    name: str,
    out: str | Path,
    *,
    results: str | Path | None = None,
    force: bool = False,
    repo: str | None = None,
) -> Path:
    """Export ``checkpoint`` of model config ``name`` to the folder ``out`` (see the module docstring);
    ``results``: an ``fgclep eval`` results.json for the card (default: one beside the checkpoint or in its
    run folder); ``repo``: the Hub repository the card names. Returns the folder's absolute path.

    Raises ``FileNotFoundError`` (a missing input) or ``ValueError`` (unknown model, unreadable or
    mismatching checkpoint, ``out`` not empty without ``force``) before writing anything."""
    checkpoint, out = Path(checkpoint), Path(os.path.abspath(out))
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} not found")
    if results is not None and not Path(results).is_file():
        raise FileNotFoundError(f"results file {results} not found")
    _check_out(out, force)
    check_writable_folder(out.parent)
    measured = read_results(Path(results), checkpoint) if results is not None else None
    found = find_results(checkpoint) if results is None else None
    if found is not None:
        measured = read_results(found, checkpoint)
        measured = measured if measured.own else None  # a file found beside: only rows of this checkpoint
    loaded = load_checked(name, checkpoint)

    import open_clip  # start-up time (load_checked)

    model_cfg = open_clip.get_model_config(name)  # pkg: placeholders resolved by the plugin's hook
    source = Source(checkpoint.resolve(), checkpoint_epoch(checkpoint), sha256(checkpoint))
    provenance = {
        "model": name,
        "checkpoint": checkpoint_name(source.checkpoint, run_folder(source.checkpoint)),
        "checkpoint_sha256": source.sha256,
        "epoch": source.epoch,
        "fgclep_plugin": package_version(),
        "exported": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        save_weights(loaded.model, stage / WEIGHTS_NAME)
        write_text_tower(loaded, model_cfg.get("text_cfg", {}), stage)
        config = open_clip_config(model_cfg, EXPORT_FOLDER, provenance)
        (stage / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        card = model_card(name, model_cfg, out, source, run_folder(checkpoint), measured, repo)
        (stage / CARD_NAME).write_text(card, encoding="utf-8")
        _make_public(stage)
        _check_out(out, force)  # still true after the work (another process may have written meanwhile)
        _publish(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out


def push_to_hub(out: str | Path, repo: str, private: bool = False) -> str:
    """Upload the exported folder ``out`` to the Hub repository ``repo`` (created if needed) with
    ``huggingface_hub.upload_folder``; its config there names ``repo`` for the text tower and tokenizer.
    Returns the commit URL. ``RuntimeError`` in one line when huggingface_hub or the network is missing."""
    try:
        from huggingface_hub import create_repo, upload_folder
    except ImportError:
        raise RuntimeError("--push-to-hub needs huggingface_hub: pip install huggingface_hub") from None
    out = Path(out)
    config = json.loads((out / CONFIG_NAME).read_text(encoding="utf-8"))
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.hub-", dir=out.parent))
    try:
        for path in out.iterdir():
            if path.name == CONFIG_NAME or not path.is_file():
                continue
            try:
                os.link(path, stage / path.name)  # no copy of the weights where the file system allows
            except OSError:
                shutil.copy2(path, stage / path.name)
        config["model_cfg"] = point_text_tower(config["model_cfg"], repo)
        (stage / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        try:
            create_repo(repo, private=private, exist_ok=True)
            info = upload_folder(
                repo_id=repo,
                folder_path=str(stage),
                commit_message=f"fgclep export of {config['fgclep']['model']}",
            )
        except Exception as e:  # network, credentials, repository name: the hub's message in one line
            raise RuntimeError(
                f"could not upload {out} to the Hugging Face Hub repository {repo} ({_first_line(e)}); "
                f"the export in {out} is complete"
            ) from e
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return str(getattr(info, "commit_url", info))


def run_export(args: argparse.Namespace) -> int:
    """``fgclep export``."""
    if args.push_to_hub:
        try:
            import huggingface_hub  # noqa: F401  (checked before the export: nothing written when it is missing)
        except ImportError:
            raise RuntimeError("--push-to-hub needs huggingface_hub: pip install huggingface_hub") from None
    out = export_model(
        args.checkpoint, args.model, args.out, results=args.results, force=args.force, repo=args.push_to_hub
    )
    print(f"exported {args.model} from {args.checkpoint} to {out} (open_clip: local-dir:{out})")
    if args.push_to_hub:
        url = push_to_hub(out, args.push_to_hub, private=args.private)
        print(f"uploaded to the Hugging Face Hub: {url} (open_clip: hf-hub:{args.push_to_hub})")
    return 0


DESCRIPTION = """\
Write an open_clip training checkpoint as the folder open_clip's hub loader reads:
open_clip_config.json (the model config, fully resolved), open_clip_model.safetensors, the text
tower's tokenizer files (and config.json of a Hugging Face tower) and README.md, a model card with
the training run's params.txt settings and measured results. After `import fgclep_plugin`,
open_clip.create_model_and_transforms("local-dir:DIR") loads it offline. DIR is written whole
or not at all; its config names no path of this machine (the text tower is "folder:.", the folder
itself, resolved by fgclep_plugin at load time), so DIR can be moved or copied elsewhere."""

EXAMPLES = """\
examples:
  fgclep export runs/demo/stage3-validated/checkpoints/epoch_2.pt --model FGCLEP-ResNet1d18-MiniLM \\
      --out exports/fgclep-minilm --results runs/eval/results.json
  fgclep export CKPT --model FGCLEP-ResNet1d18-MiniLM --out exports/fgclep-minilm --force \\
      --push-to-hub someone/fgclep-minilm
"""


def add_cli(sub: argparse._SubParsersAction) -> None:
    """``fgclep export CHECKPOINT --model NAME --out DIR``."""
    p = add_command(
        sub,
        "export",
        "write a checkpoint as an open_clip hub folder (local-dir:DIR / hf-hub:REPO) with a model card",
        DESCRIPTION,
        epilog=EXAMPLES,
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="open_clip checkpoint (epoch_N.pt) or state dict")
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help="open_clip model config the checkpoint was trained as"
    )
    add_out_argument(p, "export folder (must be empty or absent unless --force)")
    p.add_argument("--force", action="store_true", help="replace a non-empty DIR")
    p.add_argument(
        "--results",
        default=None,
        metavar="FILE",
        help="results.json of fgclep eval for the model card; without it, one beside the checkpoint or in its "
        "run folder is used for the rows that name this checkpoint",
    )
    p.add_argument(
        "--push-to-hub",
        default=None,
        metavar="REPO",
        help="also upload DIR to this Hugging Face Hub repository (needs huggingface_hub, network, a login)",
    )
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    p.set_defaults(func=run_export)
