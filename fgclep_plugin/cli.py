"""The ``fgclep`` console command: one subcommand per stage, each defined next to the code it runs."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any

# Modules that contribute subcommands through ``add_cli(subparsers)``.
SUBCOMMAND_MODULES = (
    "fgclep_plugin.synth.cli",
    "fgclep_plugin.demo",
    "fgclep_plugin.ecgdata.inspect",
    "fgclep_plugin.bench.shards",
    "fgclep_plugin.bench.all",
    "fgclep_plugin.evaluate.cli",
    "fgclep_plugin.augment.generate",
    "fgclep_plugin.augment.rewrite",
    "fgclep_plugin.evaluate.retrieval",
    "fgclep_plugin.evaluate.figures",
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every subcommand's help: defaults shown, descriptions and epilogs printed as written."""


def add_model_arguments(p: argparse.ArgumentParser, data_help: str) -> None:
    """``--data SHARDS --model NAME --checkpoint CKPT``: what every command that embeds a shard set takes."""
    p.add_argument("--data", required=True, help=data_help)
    p.add_argument("--model", required=True, help="model config name, e.g. FGCLEP-ResNet1d18-MiniLM")
    p.add_argument(
        "--checkpoint", default=None, help="open_clip checkpoint (without it: the initial, untrained weights)"
    )


def _parse_option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--option takes key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip().replace("-", "_"), parsed


def _parse_range(text: str) -> slice:
    try:
        a, b = text.split(":")
        return slice(int(a) if a else None, int(b) if b else None)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--range takes START:END item indices, got {text!r}") from e


def run_shards(args: argparse.Namespace) -> int:
    """``fgclep shards``: convert a dataset into WebDataset ECG shards."""
    from .ecgdata.shards import write_shards
    from .ecgdata.sources import make_source

    if args.limit is not None and args.limit < 0:
        raise ValueError(f"--limit must be a number of items (>= 0), got {args.limit}")
    source = make_source(args.source, args.root, **dict(args.option))
    items = source.items()
    if args.range is not None:
        items = items[args.range]
    if args.limit is not None:
        items = items[: args.limit]
    canon = {"min_seconds": args.min_seconds, "crop": args.crop, "max_nan_gap_s": args.max_nan_gap}
    summary = write_shards(
        source, args.out, args.maxcount, args.workers, items=items, canon_opts=canon, progress=not args.quiet
    )
    if args.summary_json:
        from .ecgdata.shards import atomic_write_json

        atomic_write_json(args.summary_json, summary)
    return _shards_exit_code(summary)


def _shards_exit_code(summary: dict) -> int:
    """1 (with the reason on stderr) when no record was written or any record hit an unexpected error (a reader
    bug, a file nobody anticipated): such a run must not pass for a conversion. 0 otherwise."""
    rejected, errors = sum(summary["rejected"].values()), summary["rejected"].get("error", 0)
    problems = []
    if summary["written"] == 0:
        problems.append(f"no record was written ({rejected} records rejected)")
    if errors:
        problems.append(f"{errors} record{'s' if errors > 1 else ''} failed with an unexpected error")
    if not problems:
        return 0
    print(f"fgclep shards: error: {'; '.join(problems)}; see {summary['rejects_file']}", file=sys.stderr)
    return 1


def _add_shards(sub: argparse._SubParsersAction) -> None:
    from .ecgdata.sources import SOURCES, source_options_help

    p = sub.add_parser(
        "shards",
        help="convert a dataset (MIMIC-IV-ECG, PTB-XL, Challenge format, LUDB, generic WFDB) into ECG shards",
        description="Convert a dataset into WebDataset shards of canonical 12-lead ECGs (500 Hz, 10 s, mV, "
        "float16) with their reports. Every record ends in a shard or in NAME.rejects.jsonl with its reason. "
        "Re-running the same command after an interruption completes the missing shards. Exits with status 1 "
        "when no record was written or any record failed with an unexpected error (see the rejects file).",
        epilog="sources (options go in --option KEY=VALUE; `fgclep sources NAME` lists them):\n"
        + source_options_help(),
        formatter_class=HelpFormatter,
    )
    p.add_argument("source", choices=sorted(SOURCES), help="dataset reader")
    p.add_argument("--root", required=True, help="dataset folder (as downloaded from PhysioNet)")
    p.add_argument("--out", required=True, help="shard pattern, e.g. shards/ptbxl/ptbxl-train-%%06d.tar")
    p.add_argument("--maxcount", type=int, default=1000, help="ECGs per shard")
    p.add_argument("--workers", type=int, default=1, help="parallel reader processes")
    p.add_argument(
        "--option",
        type=_parse_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="source option (repeatable), e.g. split=train (mimic) or rate=100 (ptbxl); `fgclep sources NAME`",
    )
    p.add_argument(
        "--range",
        type=_parse_range,
        default=None,
        metavar="START:END",
        help="convert only items START..END-1 of the source's sorted item list",
    )
    p.add_argument("--limit", type=int, default=None, help="convert only the first N items")
    p.add_argument("--min-seconds", type=float, default=8.0, help="reject records shorter than this")
    p.add_argument(
        "--crop", choices=["start", "center"], default="start", help="which 10 s of longer records"
    )
    p.add_argument(
        "--max-nan-gap", type=float, default=0.1, help="longest NaN run (s) repaired by interpolation"
    )
    p.add_argument("--summary-json", default=None, help="also write the summary to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_shards)


def _add_sources(sub: argparse._SubParsersAction) -> None:
    from .ecgdata.sources import SOURCES, source_options_help

    p = sub.add_parser("sources", help="list the dataset readers and their options")
    p.add_argument("name", nargs="?", choices=sorted(SOURCES), help="show this source's options in full")
    p.set_defaults(func=lambda a: print(source_options_help(a.name)))


def build_parser() -> argparse.ArgumentParser:
    """The full ``fgclep`` parser with every stage's subcommand."""
    parser = argparse.ArgumentParser(
        prog="fgclep",
        description="FG-CLEP for open_clip: convert ECG datasets to shards, generate the synthetic corpus, "
        "train (python -m fgclep_plugin.train under accelerate launch), evaluate.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_shards(sub)
    _add_sources(sub)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and name.startswith(e.name):
                continue  # stage not installed in this build
            raise
        module.add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fgclep`` console command."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        if os.environ.get("FGCLEP_DEBUG"):
            raise
        print(f"fgclep {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
