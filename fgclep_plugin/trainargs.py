"""What ``fgclep demo`` and ``fgclep study`` share: the flags of one ``python -m fgclep_plugin.train`` run built
from their settings, and ``--fast``. The two commands are siblings that may not import each other; like
:mod:`fgclep_plugin.cliargs` this module imports nothing from the package's layers, so both use it."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any


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
    ``args`` (``epochs``, ``train_samples``, ``lr``, ``warmup``) unless ``over`` sets them (``epochs``,
    ``samples``, ``lr``, ``warmup``); ``monitor`` (logging, zero-shot) before ``--fnm-lambda``, then
    ``over["extra"]`` (later flags override earlier ones)."""
    o = {
        "epochs": args.epochs,
        "samples": args.train_samples,
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
        str(o["samples"]),
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


def apply_fast(args: argparse.Namespace, parser: argparse.ArgumentParser, fast: dict[str, Any]) -> None:
    """With ``args.fast``: the ``fast`` value of every setting left at its default."""
    if args.fast:
        for k, v in fast.items():
            if getattr(args, k) == parser.get_default(k):
                setattr(args, k, v)
