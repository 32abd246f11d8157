"""The ``fgclep`` console command: one subcommand per stage, each defined next to the code it runs."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .cliargs import (  # noqa: F401  (HelpFormatter, add_model_arguments: re-exported for older imports)
    HelpFormatter,
    add_command,
    add_model_arguments,
    add_out_argument,
    add_quiet_argument,
    add_summary_json_argument,
    add_version_argument,
    add_workers_argument,
    check_data,
    parse_option,
)
from .defaults import MIN_SECONDS
from .ecgdata.outdir import check_writable_folder
from .ecgdata.shards import atomic_write_json, write_shards
from .ecgdata.sources import SOURCES, make_source, source_options_help

_parse_option = parse_option  # the older private name
# Modules that contribute subcommands through ``add_cli(subparsers)``.
SUBCOMMAND_MODULES = (
    "fgclep_plugin.synth.cli",
    "fgclep_plugin.demo.cli",
    "fgclep_plugin.ecgdata.inspect",
    "fgclep_plugin.bench.shards",
    "fgclep_plugin.bench.all",
    "fgclep_plugin.evaluate.cli",
    "fgclep_plugin.augment.generate",
    "fgclep_plugin.augment.rewrite",
    "fgclep_plugin.evaluate.commands",
    "fgclep_plugin.study.cli",
    "fgclep_plugin.deploy.classify",
    "fgclep_plugin.deploy.export",
)


def _parse_range(text: str) -> slice:
    try:
        a, b = text.split(":")
        return slice(int(a) if a else None, int(b) if b else None)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--range takes START:END item indices, got {text!r}") from e


def run_shards(args: argparse.Namespace) -> int:
    """``fgclep shards``: convert a dataset into WebDataset ECG shards."""
    if args.limit is not None and args.limit < 0:
        raise ValueError(f"--limit must be a number of items (>= 0), got {args.limit}")
    check_writable_folder(os.path.dirname(os.path.abspath(args.out)))  # before reading any record
    source = make_source(args.source, args.root, **dict(args.option))
    items = source.items()
    if args.range is not None:
        items = items[args.range]
    if args.limit is not None:
        items = items[: args.limit]
    canon = {"min_seconds": args.min_seconds, "crop": args.crop, "max_nan_gap_s": args.max_nan_gap}
    canon.update(min_fs=args.min_fs, max_fs=args.max_fs)
    summary = write_shards(
        source, args.out, args.maxcount, args.workers, items=items, canon_opts=canon, progress=not args.quiet
    )
    if args.summary_json:
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


SHARDS_HELP = "convert a dataset (MIMIC-IV-ECG, PTB-XL, Challenge format, LUDB, generic WFDB) into ECG shards"
SHARDS_DESCRIPTION = (
    "Convert a dataset into WebDataset shards of canonical 12-lead ECGs (500 Hz, 10 s, mV, "
    "float16) with their reports. Every record ends in a shard or in NAME.rejects.jsonl with its reason. "
    "Re-running the same command after an interruption completes the missing shards. Exits with status 1 "
    "when no record was written or any record failed with an unexpected error (see the rejects file)."
)


def _add_shards(sub: argparse._SubParsersAction) -> None:
    epilog = (
        "sources (options go in --option KEY=VALUE; `fgclep sources NAME` lists them):\n"
        + source_options_help()
    )
    p = add_command(sub, "shards", SHARDS_HELP, SHARDS_DESCRIPTION, epilog=epilog)
    p.add_argument("source", choices=sorted(SOURCES), help="dataset reader")
    p.add_argument("--root", required=True, help="dataset folder (as downloaded from PhysioNet)")
    add_out_argument(p, "shard pattern, e.g. shards/ptbxl/ptbxl-train-%%06d.tar")
    p.add_argument("--maxcount", type=int, default=1000, help="ECGs per shard")
    add_workers_argument(p)
    p.add_argument(
        "--option",
        type=parse_option,
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
    p.add_argument(
        "--min-seconds", type=float, default=MIN_SECONDS, help="reject records shorter than this (s)"
    )
    p.add_argument(
        "--crop", choices=["start", "center"], default="start", help="which 10 s of longer records"
    )
    p.add_argument("--min-fs", type=float, default=50.0, help="reject records sampled below this rate (Hz)")
    p.add_argument(
        "--max-fs", type=float, default=20000.0, help="reject records sampled above this rate (Hz)"
    )
    p.add_argument(
        "--max-nan-gap", type=float, default=0.1, help="longest NaN run (s) repaired by interpolation"
    )
    add_summary_json_argument(p)
    add_quiet_argument(p)
    p.set_defaults(func=run_shards)


def _add_sources(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "sources", "list the dataset readers and their options")
    p.add_argument("name", nargs="?", choices=sorted(SOURCES), help="show this source's options in full")
    p.set_defaults(func=lambda a: print(source_options_help(a.name)))


def build_parser() -> argparse.ArgumentParser:
    """The full ``fgclep`` parser with every stage's subcommand."""
    parser = argparse.ArgumentParser(
        prog="fgclep",
        description="FG-CLEP for open_clip: convert ECG datasets to shards, generate the synthetic corpus, "
        "train (python -m fgclep_plugin.train under accelerate launch), evaluate.",
    )
    add_version_argument(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_shards(sub)
    _add_sources(sub)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            # A stage whose third-party dependency this environment lacks is left out: the generation-only
            # environment (vLLM CPU, installed with --no-deps) has no open_clip, webdataset or matplotlib,
            # and there only `fgclep features generate` is needed. A missing module of our own still raises.
            if e.name and (name.startswith(e.name) or not e.name.startswith("fgclep_plugin")):
                continue
            raise
        module.add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fgclep`` console command: exit status 0, 1 on a runtime error (one line on stderr
    naming the file or record), 2 on a usage error (argparse)."""
    args = build_parser().parse_args(argv)
    check_data(args)
    try:
        return int(args.func(args) or 0)
    except (OSError, ValueError, RuntimeError) as e:  # OSError: missing, unreadable or misplaced files
        if os.environ.get("FGCLEP_DEBUG"):
            raise
        print(f"fgclep {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
