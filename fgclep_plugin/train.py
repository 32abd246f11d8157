"""Training entry point: open_clip's training loop with FG-CLEP's ECG data, loss and zero-shot check.

    accelerate launch [--cpu | --multi_gpu --num_processes N] -m fgclep_plugin.train \\
        --model FGCLEP-ResNet1d18-MiniLM --train-data 'shards/x-{000000..000009}.tar' ... [plugin flags]

Every open_clip_train flag keeps its meaning (``--resume latest``, ``--pretrained``, ``--precision``,
``--accum-freq``, ``--grad-checkpointing``, ``--lock-text``, checkpoints, logs, TensorBoard); the plugin's own
flags (:func:`plugin_parser`) are taken off the command line first, because open_clip parses strictly.
Stage 3 is the same command with ``--pretrained <stage-1 checkpoint>`` and the augmented shards.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import logging
import os
import pickle
import sys
import warnings
import zipfile
from collections.abc import Iterator, Sequence

from .ecgdata.reader import expand_urls
from .model.device import process_index


def plugin_parser() -> argparse.ArgumentParser:
    """The plugin's flags (everything else goes to open_clip_train)."""
    p = argparse.ArgumentParser(
        prog="python -m fgclep_plugin.train",
        add_help=False,
        allow_abbrev=False,
        description="FG-CLEP flags; all other flags are open_clip_train's.",
    )
    g = p.add_argument_group("FG-CLEP loss")
    g.add_argument(
        "--fnm-lambda", type=float, default=0.5, help="weight of the false-negative mitigation term"
    )
    g.add_argument(
        "--fnm-detach",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="treat the report similarity matrix S as a fixed target (default: on)",
    )
    g.add_argument(
        "--fnm-global",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="FNM of the local ECGs against the reports of the whole gathered batch in multi-process "
        "runs (default: on; the mean over processes then equals the one-process loss)",
    )
    g.add_argument(
        "--fnm-norm",
        choices=("paper", "mean"),
        default="paper",
        help="FNM normalisation: 'paper' = Eq. 6, sum over the B x B ECG-report pairs divided by B, as the "
        "SigLIP term (default); 'mean' = mean over the pairs, B times weaker, so a lambda means something "
        "else at every batch size (the behaviour before the paper's normalisation)",
    )
    g.add_argument(
        "--init-logit-scale",
        type=float,
        default=None,
        help="initial log temperature (overrides the model config and --siglip)",
    )
    g.add_argument(
        "--init-logit-bias",
        type=float,
        default=None,
        help="initial SigLIP bias (overrides the model config and --siglip's -10, which suits "
        "batches of ~10-30k; small batches train better from about log(1/batch))",
    )
    g = p.add_argument_group("ECG data")
    g.add_argument(
        "--ecg-zeroshot-data",
        default=None,
        help="labelled shards for the ECG zero-shot AUC run every --zeroshot-frequency epochs",
    )
    g.add_argument(
        "--ecg-zeroshot-label-key",
        default="diagnoses",
        help="key in a sample's json 'labels' holding its class names",
    )
    g.add_argument(
        "--ecg-zeroshot-classes",
        default=None,
        help="comma-separated class names (default: every class found in the zero-shot set)",
    )
    g.add_argument(
        "--ecg-zeroshot-prompts",
        default=None,
        help='JSON file {class name: prompt text}, e.g. {"STTC": "ST/T change"}: label codes read as '
        "words in the zero-shot prompts (unmapped names: underscores read as spaces)",
    )
    g.add_argument(
        "--ecg-zeroshot-keep-unlabelled",
        action="store_true",
        help="count zero-shot samples without a label as negatives of every class (default: drop them, as "
        "the PTB-XL benchmark protocol does; their number is logged either way)",
    )
    g.add_argument(
        "--ecg-deterministic-data",
        action="store_true",
        help="no shuffling or random crops; rank r gets the r-th slice of each global batch "
        "(N processes then see the same global batches as one)",
    )
    g.add_argument(
        "--ecg-feature-injection",
        choices=("append", "caption", "multi-positive"),
        default="append",
        help="how stage-2 features enter training: appended to the report (txt as written, default), each "
        "kept feature as a caption of its own drawn with the report, or every kept feature an extra positive "
        "of its ECG in the sigmoid loss (one process, no --accum-freq). Measured on the synthetic corpus: "
        "appended, even true features lower feature zero-shot AUC; as captions or multi-positive they raise it, "
        "and validated features as multi-positive too (stage 3 on augmented shards: multi-positive where it runs)",
    )
    g.add_argument(
        "--loss-log",
        default=None,
        help="append one row per optimiser step of process r to <path>-rank<r>.jsonl: open_clip's epoch "
        "(0-based) and global step, and each loss term (mean over the --accum-freq micro-batches)",
    )
    return p


def accelerate_cpu_command(processes: int = 1) -> list[str]:
    """``python -m accelerate.commands.launch`` for ``processes`` CPU processes (gloo when more than one),
    followed by ``-m fgclep_plugin.train``: append the training flags."""
    mode = (
        ["--cpu", "--num_processes", "1"]
        if processes == 1
        else ["--multi_gpu", "--num_processes", str(processes)]
    )
    return [
        sys.executable, "-m", "accelerate.commands.launch", *mode, "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "fgclep_plugin.train",
    ]  # fmt: skip


def split_argv(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """(plugin flags, remaining open_clip_train argv)."""
    return plugin_parser().parse_known_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int | None:
    """Run open_clip_train's ``main`` with the plugin registered and the training hooks installed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        plugin_parser().print_help()
        print("\nopen_clip_train flags:\n")
    plugin_args, rest = split_argv(argv)
    problem = check_injection(plugin_args, rest)
    if problem:  # a usage error, before any work (the loss would raise it at the first step)
        print(f"fgclep_plugin.train: error: {problem}", file=sys.stderr)
        return 2
    problem = check_train_data(rest)
    if problem:  # before any work: open_clip would train 0 steps (or loop forever with --dataset-resampled)
        print(f"fgclep_plugin.train: error: {problem}", file=sys.stderr)
        return 1

    # start-up time: these load torch, open_clip and open_clip_train's data stack; the demo and the fgclep
    # parser import this module only for plugin_parser / accelerate_cpu_command
    import open_clip_train.main as oc_main

    from .training.hooks import register, training_hooks

    register()
    with (
        training_hooks(plugin_args),
        _logging_restored(),
        _weights_only_resume(oc_main),
        _complete_latest(oc_main),
    ):
        try:
            return oc_main.main(rest)
        except BadCheckpoint as e:
            print(f"fgclep_plugin.train: error: {e}", file=sys.stderr)
            return 1


def check_injection(
    plugin_args: argparse.Namespace, argv: Sequence[str], world_size: int | None = None
) -> str | None:
    """Why ``--ecg-feature-injection`` cannot run with these open_clip_train flags ``argv`` and ``world_size``
    processes (default: the launcher's ``WORLD_SIZE``, :func:`fgclep_plugin.model.device.process_index`), or
    None. ``multi-positive`` runs in one process without ``--accum-freq`` (:mod:`.training.injection`): the loss
    would raise at the first step, after the model, the data and the zero-shot set were loaded."""
    if getattr(plugin_args, "ecg_feature_injection", "append") != "multi-positive":
        return None
    if world_size is None:
        world_size = process_index()[1]
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--accum-freq", default="1")
    accum = p.parse_known_args(list(argv))[0].accum_freq
    why = []
    if world_size > 1:
        why.append(f"{world_size} processes (WORLD_SIZE)")
    try:
        if int(accum) > 1:
            why.append(f"--accum-freq {accum}")
    except ValueError:  # not a number: open_clip's parser refuses it
        pass
    if not why:
        return None
    return (
        f"--ecg-feature-injection multi-positive runs in one process without --accum-freq; got "
        f"{' and '.join(why)} (use one process and --accum-freq 1, or --ecg-feature-injection append or caption)"
    )


def check_train_data(argv: Sequence[str]) -> str | None:
    """Why ``--train-data`` cannot be trained on (no local shard it names exists, or some are missing), or None.

    Remote specs (``pipe:``, ``s3://``, ...) are left to open_clip."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--train-data", default=None)
    spec = p.parse_known_args(list(argv))[0].train_data
    if not spec:
        return None
    urls = expand_urls(spec)
    local = [u.removeprefix("file:") for u in urls if not u.startswith("pipe:") and "://" not in u]
    missing = [u for u in local if not os.path.isfile(u)]
    if not urls or (local and len(missing) == len(local)):
        return f"--train-data {spec!r} matches no shard file"
    if missing:
        return f"--train-data {spec!r}: {len(missing)} of {len(urls)} shards do not exist (e.g. {missing[0]})"
    return None


class BadCheckpoint(RuntimeError):
    """A ``--resume`` checkpoint that cannot be loaded (cut short, not a checkpoint)."""


class UnsafeCheckpoint(BadCheckpoint):
    """A checkpoint that ``torch.load(..., weights_only=True)`` refuses (it holds more than weights)."""


@contextlib.contextmanager
def _weights_only_resume(oc_main) -> Iterator[None]:
    """``--resume`` goes through ``open_clip_train.main.pt_load``, which calls ``torch.load`` with torch's default
    (code runs when torch is configured to allow pickles); replace it with a ``weights_only=True`` load."""
    import fsspec  # start-up time (see main)
    import torch

    def pt_load(file_path: str, map_location=None):
        with fsspec.open(file_path, "rb") as f:
            try:
                return torch.load(f, map_location=map_location, weights_only=True)
            except pickle.UnpicklingError as e:
                first = str(e).strip().splitlines()[0][:200]
                raise UnsafeCheckpoint(f"{file_path}: refused to load (not plain weights; {first})") from None
            except (RuntimeError, EOFError) as e:  # torch's reader on a file cut short or not a checkpoint
                first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                raise BadCheckpoint(f"{file_path}: cannot be read ({first})") from None

    saved = oc_main.pt_load
    oc_main.pt_load = pt_load
    try:
        yield
    finally:
        oc_main.pt_load = saved


@contextlib.contextmanager
def _complete_latest(oc_main) -> Iterator[None]:
    """``--resume latest`` takes the last ``*.pt`` by name, also one a kill cut short while ``torch.save`` wrote it
    (open_clip writes ``epoch_N.pt`` in place); skip local files that are not complete zip archives (torch's
    format ends with the zip's central directory), with a warning naming each, and ``tmp.pt``."""
    saved = oc_main.get_latest_checkpoint

    def get_latest_checkpoint(path: str, remote: bool):
        if remote:
            return saved(path, remote)
        found = sorted(glob.glob(path + "**/*.pt", recursive=True), key=oc_main.natural_key)
        for ckpt in reversed(found):
            if os.path.basename(ckpt) == "tmp.pt":  # open_clip's --save-most-recent temporary
                continue
            if zipfile.is_zipfile(ckpt):
                return ckpt
            warnings.warn(f"{ckpt}: incomplete checkpoint skipped (cut short while written?)", stacklevel=2)
        return None

    oc_main.get_latest_checkpoint = get_latest_checkpoint
    try:
        yield
    finally:
        oc_main.get_latest_checkpoint = saved


@contextlib.contextmanager
def _logging_restored() -> Iterator[None]:
    """open_clip's ``setup_logging`` sets the root and every existing logger to INFO and adds a handler; undo
    that when training returns, so in-process callers (tests, notebooks) do not inherit the chatter."""
    manager = logging.root.manager
    levels = {name: lg.level for name, lg in manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    root_level, root_handlers = logging.root.level, list(logging.root.handlers)
    try:
        yield
    finally:
        for name, lg in list(manager.loggerDict.items()):
            if isinstance(lg, logging.Logger):
                lg.setLevel(levels.get(name, logging.NOTSET))
        logging.root.setLevel(root_level)
        for handler in logging.root.handlers:
            if handler not in root_handlers:
                handler.close()  # open_clip's log-file handler
        logging.root.handlers[:] = root_handlers


if __name__ == "__main__":
    sys.exit(main())
