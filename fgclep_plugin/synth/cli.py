"""``fgclep synth``: generate the synthetic ECG-report corpus (train / val / test shards)."""

from __future__ import annotations

import argparse
import json
import time

from ..cliargs import (
    add_command,
    add_out_argument,
    add_quiet_argument,
    add_seed_argument,
    add_summary_json_argument,
    add_workers_argument,
)
from ..ecgdata.outdir import check_writable_folder
from .corpus import DEFAULT_MAXCOUNT, DEFAULT_ROOT, DEFAULT_SEED, DEFAULT_SIZES, generate_corpus
from .reports import DEFAULT_P_MENTION


def run(args: argparse.Namespace) -> int:
    """Generate (or complete) the corpus and print one summary line per split."""
    sizes = {"train": args.train, "val": args.val, "test": args.test}
    check_writable_folder(args.out)  # before any work
    t0 = time.time()
    summaries = generate_corpus(
        args.out,
        sizes,
        args.seed,
        args.workers,
        args.maxcount,
        progress=not args.quiet,
        log=None,
        p_mention=args.p_mention,
    )
    for split, s in summaries.items():
        print(f"{split:5s}: {s['written']} ECGs in {s['shards']} shard(s) -> {s['urls']}")
        if s["rejected"]:  # the writer's checks (e.g. amplitude) refused some simulated records: say so
            reasons = ", ".join(f"{n} {reason}" for reason, n in s["rejected"].items())
            print(f"       rejected {sum(s['rejected'].values())} ({reasons}): see {s['rejects_file']}")
    print(f"done in {time.time() - t0:.1f} s")
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(summaries, f, indent=1)
    return 0


def add_cli(subparsers) -> None:
    """Register the ``synth`` subcommand."""
    p = add_command(
        subparsers,
        "synth",
        "generate the synthetic 12-lead ECG-report corpus with known waveform features",
        "Simulate 12-lead ECGs (cardiac dipole model, 500 Hz, 10 s, mV) with machine-style reports "
        "and ground-truth waveform features, and write them as train/val/test shards under OUT/<split>/. "
        "Deterministic in --seed; re-running completes a partial corpus.",
    )
    add_out_argument(p, "corpus folder", default=DEFAULT_ROOT)
    p.add_argument("--train", type=int, default=DEFAULT_SIZES["train"], help="training records")
    p.add_argument("--val", type=int, default=DEFAULT_SIZES["val"], help="validation records")
    p.add_argument("--test", type=int, default=DEFAULT_SIZES["test"], help="test records")
    add_seed_argument(p, "corpus seed", default=DEFAULT_SEED)
    p.add_argument(
        "--p-mention",
        type=float,
        default=DEFAULT_P_MENTION,
        help="probability that a report states each present waveform feature (default set from PTB-XL)",
    )
    add_workers_argument(p, "parallel generator processes")
    p.add_argument("--maxcount", type=int, default=DEFAULT_MAXCOUNT, help="records per shard")
    add_summary_json_argument(p)
    add_quiet_argument(p)
    p.set_defaults(func=run)
