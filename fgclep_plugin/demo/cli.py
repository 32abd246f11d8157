"""``fgclep demo`` (and ``python -m fgclep_plugin.demo``): the arguments and the entry point."""

from __future__ import annotations

import argparse
import os
import sys

from .. import trainargs
from ..cliargs import HelpFormatter, add_command, add_out_argument, add_seed_argument
from ..defaults import DEFAULT_MODEL, INJECTIONS, LUDB_DATA, SYNTH_DATA
from ..training.precision import resolve_precision
from .config import DEMO_FNM_LAMBDA, DEMO_RULES, FAST, STAGE3_INJECTION

DESCRIPTION = """Demo: the whole FG-CLEP method on the embedded data, one command, one table.

    fgclep demo [--out DIR] [--generator kb|vllm:<model>|openai:<url>] [--fast]

1. stage 1 (CLEP): the synthetic corpus (generated on first use), the real training entry point under
   ``accelerate launch``, the learning curve (epoch, SigLIP + FNM loss, held-out zero-shot AUC; epoch 0 = the
   untrained model);
2. stage 2: candidate features per report (the offline knowledge base in-process, or an LLM through
   ``fgclep features generate``) validated with the stage-1 model (``fgclep augment``), plus a control that
   keeps every candidate unvalidated and the ceiling that keeps exactly the truly present ones (oracle);
3. stage 3 (FG-CLEP): the same entry point with ``--pretrained`` on the validated shards, the two controls
   for the same epochs (unvalidated candidates, original reports) and the perfect-validation ceiling; the kept
   features enter as extra positives of their ECG in the sigmoid loss (``--stage3-injection multi-positive``);
4. evaluation (``fgclep eval``'s functions): zero-shot macro AUC with bootstrap interval (templates and ENS) on
   the synthetic diagnoses, the synthetic waveform features and LUDB records 151-200, the linear probe, and
   the ground-truth precision / recall of the kept features; ``results.md``, ``results.json``, figures.

Every stage writes a settings manifest (its settings + the digests of the stages it reads); a re-run skips
stages whose manifest matches and re-runs a stage whose settings or inputs changed (and what depends on it).
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Every ``fgclep demo`` flag."""
    p.add_argument(
        "--synth-data", default=SYNTH_DATA, help="synthetic corpus folder (generated on first use)"
    )
    p.add_argument(
        "--root", dest="synth_data", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )  # older name
    p.add_argument("--model", default=DEFAULT_MODEL, help="open_clip model config")
    trainargs.add_training_arguments(
        p,
        fnm_lambda=DEMO_FNM_LAMBDA,
        fnm_help="weight of the FNM term (Eq. 6 normalisation; the paper's 0.5 is measured too strong at batch 32)",
        precision="auto",
        precision_help="open_clip precision; auto: amp_bf16 on a CPU with native bf16 (AVX512-BF16/AMX: ~2x fp32), "
        "else fp32 (emulated bf16 is ~30x slower in the text tower's backward)",
    )
    p.add_argument("--processes", type=int, default=1, help="accelerate processes (CPU)")
    add_seed_argument(p, "training seed")
    p.add_argument(
        "--logs",
        default=None,
        help="stage 1 ONLY, into LOGS/NAME (the stage-1 demo: curve.json, checkpoints); default: the whole demo",
    )
    p.add_argument(
        "--name", default=None, help="stage-1 run name (default: stage1; with --logs demo-<model>-...)"
    )
    p.add_argument(
        "--gen-workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="processes generating the synthetic corpus (the same bytes for any number)",
    )
    g = p.add_argument_group("whole demo (stages 2 and 3, evaluation)")
    add_out_argument(g, "folder of every stage, results.md/json and figures", default="runs/demo")
    g.add_argument(
        "--generator",
        default="kb",
        help="candidate features: kb (offline knowledge base), vllm:<model dir>, openai:<server url>",
    )
    g.add_argument("--llm-model", default=None, help="openai: the served model name")
    g.add_argument(
        "--fast",
        action="store_true",
        help="small settings (about 6 minutes; the demo's test: too short to learn)",
    )
    g.add_argument(
        "--rule",
        default="quantile",
        choices=DEMO_RULES,
        help="stage-2 rule of the FG-CLEP run (fgclep augment --rule; oracle is the perfect-validation run's)",
    )
    trainargs.add_stage3_arguments(g)
    g.add_argument(
        "--stage3-injection",
        choices=INJECTIONS,
        default=STAGE3_INJECTION,
        help="how the kept features enter stage 3 (--ecg-feature-injection of the runs on stage-2 shards; the "
        "original-report control has none). Measured on the synthetic corpus (fgclep study, 3 seeds): appended "
        "to the report they lower feature zero-shot AUC even when true (-0.04); as multi-positive (report and "
        "each feature positives of the ECG) they raise it (+0.16 true features, +0.11 validated); one process",
    )
    g.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples of the test records")
    g.add_argument("--probe-epochs", type=int, default=30, help="linear-probe head epochs")
    g.add_argument("--ludb-data", default=LUDB_DATA, help="the LUDB shards (test = records 151-200)")
    p.add_argument("extra", nargs="*", help="more flags for fgclep_plugin.train (after --)", default=[])


def apply_fast(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """With ``--fast``: the FAST values for every setting left at its default."""
    trainargs.apply_fast(args, parser, FAST)


def _main_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    # imported here: the stages load torch and open_clip, and `fgclep` imports this module for its parser
    from .pipeline import run_demo
    from .stages import parse_generator, run

    if args.precision == "auto":
        args.precision = resolve_precision("auto", "cpu")
        print(f"[precision] auto -> {args.precision} (native bf16 on this CPU: {args.precision != 'fp32'})")
    if args.logs is not None:  # stage 1 only
        args.name = args.name or f"demo-{args.model}-{args.epochs}ep-seed{args.seed}"
        run(args)
        return 0
    parse_generator(args.generator)
    if args.stage3_injection == "multi-positive" and args.processes > 1:
        parser.error(
            "--stage3-injection multi-positive trains in one process: pass --processes 1, or "
            "--stage3-injection caption (or append) to train with several"
        )
    apply_fast(args, parser)
    run_demo(args)
    return 0


def add_cli(subparsers) -> None:
    """``fgclep demo``."""
    p = add_command(
        subparsers,
        "demo",
        "the whole method on the embedded data: CLEP, validated features, FG-CLEP, controls, one table",
        DESCRIPTION,
    )
    add_arguments(p)
    p.set_defaults(func=lambda a: _main_from_args(a, p))


def main(argv: list[str] | None = None) -> int:
    """``python -m fgclep_plugin.demo``."""
    p = argparse.ArgumentParser(
        prog="python -m fgclep_plugin.demo", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    add_arguments(p)
    return _main_from_args(p.parse_args(argv), p)


if __name__ == "__main__":
    sys.exit(main())
