"""What ``fgclep demo`` and ``fgclep study`` share: their training options (:func:`add_training_arguments`,
:func:`add_stage3_arguments`), the flags of one ``python -m fgclep_plugin.train`` run built from them
(:func:`train_argv`, :func:`stage3_over` for a stage-3 run), and ``--fast``. The two commands are siblings
that may not import each other; like :mod:`fgclep_plugin.cliargs` this module imports nothing from the
package's layers, so both use it."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Stage-3 recipe (docs/results.md "Stage-3 recipe"): lr 1e-4 with no warm-up from the stage-1 weights cost 5-7
# points of feature zero-shot AUC on the original reports; 3e-5 with 10 warm-up steps ends within 0.01 of stage 1.
STAGE3_LR, STAGE3_WARMUP = 3e-5, 10
STAGE3_INITS = ("pretrained", "resume")


def add_training_arguments(
    p: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    fnm_lambda: float,
    fnm_help: str,
    precision: str,
    precision_help: str,
) -> None:
    """The options of every training run (:func:`train_argv` reads them): ``--epochs``, ``--train-samples``,
    ``--lr`` and ``--warmup`` of stage 1 (stage 3 has its own, :func:`add_stage3_arguments`), ``--batch-size``,
    ``--fnm-lambda``, ``--workers`` and ``--precision``."""
    p.add_argument("--epochs", type=int, default=6, help="stage-1 epochs")
    p.add_argument("--train-samples", type=int, default=1600, help="stage-1 samples per epoch")
    p.add_argument("--batch-size", type=int, default=32, help="batch size per process")
    p.add_argument("--lr", type=float, default=3e-4, help="stage-1 learning rate (AdamW)")
    p.add_argument("--warmup", type=int, default=10, help="stage-1 warm-up steps")
    p.add_argument("--fnm-lambda", type=float, default=fnm_lambda, help=fnm_help)
    p.add_argument("--workers", type=int, default=1, help="dataloader workers")
    p.add_argument("--precision", default=precision, help=precision_help)


def add_stage3_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup, *, init: bool = False) -> None:
    """The stage-2 and stage-3 options :func:`stage3_over` and the stage-2 step read: ``--calib-size``,
    ``--stage3-shards``, ``--stage3-epochs``, ``--stage3-samples``, ``--stage3-init`` (with ``init``; without
    it every stage-3 run is ``pretrained``), ``--stage3-lr`` and ``--stage3-warmup``."""
    p.add_argument("--calib-size", type=int, default=500, help="reference ECGs of the quantile rule")
    p.add_argument("--stage3-shards", type=int, default=2, help="training shards (500 ECGs each) augmented")
    p.add_argument("--stage3-epochs", type=int, default=2, help="stage-3 epochs (each run and control)")
    p.add_argument("--stage3-samples", type=int, default=800, help="stage-3 training samples per epoch")
    if init:
        p.add_argument(
            "--stage3-init",
            choices=STAGE3_INITS,
            default="pretrained",
            help="pretrained: fresh optimizer from the stage-1 weights at --stage3-lr; resume: continue "
            "the stage-1 run (its optimizer and schedule) for --stage3-epochs more",
        )
    p.add_argument(
        "--stage3-lr", type=float, default=STAGE3_LR, help="stage-3 learning rate (pretrained: fresh AdamW)"
    )
    p.add_argument(
        "--stage3-warmup", type=int, default=STAGE3_WARMUP, help="stage-3 warm-up steps (pretrained)"
    )


def train_argv(
    args: argparse.Namespace,
    data: str,
    logs: str | Path,
    name: str,
    seed: int,
    monitor: Sequence[str] = (),
    **over: Any,
) -> list[str]:
    """``python -m fgclep_plugin.train`` flags of one CPU run into ``LOGS/NAME`` on ``data``: model, batch size,
    workers, precision and FNM weight from ``args``; epochs, samples per epoch, learning rate and warm-up from
    ``args`` (``epochs``, ``train_samples``, ``lr``, ``warmup``) unless ``over`` sets them (the same names);
    ``monitor`` (logging, zero-shot) before ``--fnm-lambda``, then ``over["extra"]`` (later flags override
    earlier ones)."""
    o = {
        "epochs": args.epochs,
        "train_samples": args.train_samples,
        "lr": args.lr,
        "warmup": args.warmup,
        **over,
    }
    argv = [
        "--model",
        args.model,
        "--train-data",
        data,
        "--train-num-samples",
        str(o["train_samples"]),
        "--batch-size",
        str(args.batch_size),
        "--epochs",
        str(o["epochs"]),
        "--lr",
        str(o["lr"]),
        "--wd",
        "1e-4",
        "--warmup",
        str(o["warmup"]),
        "--workers",
        str(args.workers),
        "--device",
        "cpu",
        "--precision",
        args.precision,
        "--seed",
        str(seed),
        "--logs",
        str(logs),
        "--name",
        name,
        "--save-frequency",
        "0",
        *monitor,
        "--fnm-lambda",
        str(args.fnm_lambda),
    ]
    return argv + list(o.get("extra", []))


def stage3_over(
    args: argparse.Namespace,
    checkpoint: str | Path,
    injection: str | None,
    init: str = "pretrained",
    extra: Sequence[str] = (),
) -> dict[str, Any]:
    """The :func:`train_argv` settings of a stage-3 run from the stage-1 ``checkpoint``: ``--stage3-epochs`` and
    ``--stage3-samples``; ``pretrained``: a fresh optimizer from the stage-1 weights at ``--stage3-lr`` with
    ``--stage3-warmup``; ``resume``: open_clip's ``--resume`` of the stage-1 run (its optimizer state and LR
    schedule) for ``--stage3-epochs`` more epochs. The extra flags: ``--ecg-feature-injection INJECTION``
    (none without ``injection``), ``extra``, then the checkpoint flag."""
    flags = [*(["--ecg-feature-injection", injection] if injection else []), *extra]
    if init == "resume":
        return {
            "epochs": args.epochs + args.stage3_epochs,
            "train_samples": args.stage3_samples,
            "extra": [*flags, "--resume", str(checkpoint)],
        }
    if init != "pretrained":
        raise ValueError(f"stage-3 init must be one of {STAGE3_INITS}, got {init!r}")
    return {
        "epochs": args.stage3_epochs,
        "train_samples": args.stage3_samples,
        "lr": args.stage3_lr,
        "warmup": args.stage3_warmup,
        "extra": [*flags, "--pretrained", str(checkpoint)],
    }


def apply_fast(args: argparse.Namespace, parser: argparse.ArgumentParser, fast: dict[str, Any]) -> None:
    """With ``args.fast``: the ``fast`` value of every setting left at its default."""
    if args.fast:
        for k, v in fast.items():
            if getattr(args, k) == parser.get_default(k):
                setattr(args, k, v)
