"""``fgclep study``: the controlled grid that says whether stage 2 + 3 helps, and where.

    fgclep study [--out runs/study] [--mention-rates 0.1 0.3 0.6] [--seeds 0 1 2] [--fast]
                 [--corpus 0.3=data/synth --stage1 0.3=runs/demo/stage1/checkpoints/epoch_6.pt]

Per mention rate: a synthetic corpus (``fgclep synth --p-mention``), stage 1, the stage-2 arms (``fgclep
augment``: validated per rule, unvalidated, perfect validation, perfect features, wrong features), and stage 3
per (arm, injection, seed) from the same stage-1 checkpoint with the same recipe, beside the original-report
control of each seed. Reports every arm's paired gain over the control with an interval over seeds and test
records, stage-2 precision / recall against the truth, and a figure of gain vs mention rate (``OUT/results.md``,
``results.json``, ``gain_vs_mention_rate.png``). Resumable: a re-run skips finished steps.

The default grid (3 rates x 3 seeds; per rate and seed the original-report control and 5 stage-2 arms x 2
injections, 11 stage-3 runs) is several hours of CPU; ``--corpus`` and
``--stage1`` reuse a corpus and stage-1 checkpoint (e.g. the demo's for 0.3).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import trainargs
from ..cliargs import HelpFormatter
from ..defaults import DEFAULT_MODEL, INJECTIONS

# --fast: FGCLEP-Tiny on a tiny corpus, two rates, two seeds, one stage-2 arm with two injections (the study's
# test: every step and the report run; too small to learn).
FAST = {
    "model": "FGCLEP-Tiny",
    "mention_rates": [0.3, 0.6],
    "seeds": [0, 1],
    "train": 64,
    "val": 16,
    "test": 48,
    "epochs": 1,
    "train_samples": 32,
    "batch_size": 16,
    "stage3_epochs": 1,
    "stage3_samples": 32,
    "stage3_shards": 1,
    "calib_size": 32,
    "bootstrap": 50,
    "injections": ["append", "multi-positive"],
    "arms": ["perfect-features"],
}


def _mapping(text: str) -> tuple[float, str]:
    rate, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return float(rate), value
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected RATE=PATH, e.g. 0.3=data/synth, got {text!r}") from None


def _add_per_rate(p: argparse.ArgumentParser, flag: str, what: str, help: str) -> None:
    """A repeatable ``FLAG RATE=WHAT``: an existing input for one mention rate (a dict after :func:`_main`)."""
    p.add_argument(flag, type=_mapping, action="append", default=[], metavar=f"RATE={what}", help=help)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/study", help="folder of every step, results.md/json and the figure")
    p.add_argument("--model", default=DEFAULT_MODEL, help="open_clip model config")
    p.add_argument("--mention-rates", type=float, nargs="+", default=[0.1, 0.3, 0.6], help="corpus p-mention")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="stage-3 seeds")
    p.add_argument("--rules", nargs="+", default=["quantile"], help="validated arms: fgclep augment rules")
    p.add_argument(
        "--arms",
        nargs="*",
        default=None,
        help="stage-2 arms to train (default: every one; none: stage 1 and the original-report control only)",
    )
    p.add_argument(
        "--injections",
        nargs="+",
        choices=INJECTIONS,
        default=["append", "multi-positive"],
        help="how the features enter stage 3 (caption: measured with perfect features only, see docs/results.md)",
    )
    p.add_argument(
        "--injection-arms",
        nargs="+",
        default=None,
        help="arms trained with the injections other than append (append: every arm; default: every arm)",
    )
    _add_per_rate(p, "--corpus", "DIR", "use this synthetic corpus for a rate (checked against its samples)")
    _add_per_rate(
        p, "--stage1", "CKPT", "use this stage-1 checkpoint for a rate (trained with --epochs epochs)"
    )
    g = p.add_argument_group("corpus and stage 1 (the demo's settings)")
    g.add_argument("--train", type=int, default=4000, help="training records")
    g.add_argument("--val", type=int, default=500, help="validation records")
    g.add_argument("--test", type=int, default=500, help="test records")
    g.add_argument("--gen-workers", type=int, default=2, help="corpus generator processes")
    trainargs.add_training_arguments(
        g,
        fnm_lambda=0.05,
        fnm_help="FNM weight (the demo's)",
        precision="fp32",
        precision_help="open_clip precision",
    )
    g = p.add_argument_group("stage 2 and stage 3 (the recipe)")
    trainargs.add_stage3_arguments(g, init=True)
    g = p.add_argument_group("report")
    g.add_argument("--bootstrap", type=int, default=1000, help="two-level bootstrap resamples")
    g.add_argument("--eval-batch-size", type=int, default=64, help="ECGs per encoder batch when scoring")
    g.add_argument("--keep-checkpoints", action="store_true", help="keep stage-3 checkpoints")
    g.add_argument("--fast", action="store_true", help="tiny settings (the study's test; too small to learn)")


def apply_fast(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """With ``--fast``: the FAST values for every setting left at its default."""
    trainargs.apply_fast(args, parser, FAST)


def _main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    # imported here: the grid loads torch and open_clip, too slow for every `fgclep` start
    from .grid import run_study
    from .report import build, format_tables

    apply_fast(args, parser)
    args.corpus, args.stage1 = dict(args.corpus), dict(args.stage1)
    plans, setup = run_study(args)
    result = build(Path(args.out), plans, setup)
    print(format_tables(result))
    print(f"\nwritten: {args.out}/results.md, results.json, gain_vs_mention_rate.png")
    return 0


def add_cli(subparsers) -> None:
    """``fgclep study``."""
    p = subparsers.add_parser(
        "study",
        help="does stage 2 + 3 help? oracle arms, controls, seeds, mention rates: one grid, one table",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=lambda a: _main(a, p))
