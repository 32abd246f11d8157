"""``fgclep eval``: build benchmark task shards, list tasks, run zero-shot and linear-probe evaluation."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..cliargs import (
    add_command,
    add_model_arguments,
    add_out_argument,
    add_quiet_argument,
    add_run_arguments,
    add_workers_argument,
    parse_option,
)
from ..defaults import LUDB_DATA, MERL_DATA, MIN_SECONDS, SYNTH_DATA
from ..model.device import process_index
from .results import format_markdown, write_results
from .tasks import ALL_TASKS, LUDB_TASKS, MERL_DATASETS, MERL_TASKS, build_benchmark, get_task, is_url

if TYPE_CHECKING:
    from .api import EvalSettings

EXAMPLES = """examples:
  fgclep eval build ptbxl --root /data/ptb-xl --benchmarks merl-benchmark --out shards/merl
  fgclep eval zeroshot --model FGCLEP-ResNet1d18-MiniLM --checkpoint CLEP=runs/demo/stage1/checkpoints/epoch_6.pt \\
      --checkpoint FG-CLEP=runs/demo/stage3-validated/checkpoints/epoch_2.pt --task synth-diagnosis --task ludb-rhythm
  fgclep eval linear --model FGCLEP-ResNet1d18-MiniLM --checkpoint runs/demo/stage1/checkpoints/epoch_6.pt \\
      --task synth-diagnosis --merl-selection
"""


def parse_checkpoint(text: str) -> tuple[str, str | None]:
    """``LABEL=PATH`` or ``PATH`` (label: the run folder and file stem) or ``none`` (random weights)."""
    if "=" in text and not Path(text).exists():
        label, path = text.split("=", 1)
        return label, None if path == "none" else path
    if text == "none":
        return "untrained", None
    p = Path(text)
    run = p.parent.parent.name if p.parent.name == "checkpoints" else p.parent.name
    return (f"{run}/{p.stem}" if run else p.stem), text


def run_build(args: argparse.Namespace) -> int:
    """``fgclep eval build``: MERL task shards from a raw dataset folder."""
    summaries = build_benchmark(
        args.dataset,
        args.root,
        args.benchmarks,
        args.out,
        source_options=dict(args.option),
        maxcount=args.maxcount,
        workers=args.workers,
        min_seconds=args.min_seconds,
        progress=not args.quiet,
    )
    print(
        f"tasks written to {Path(args.out) / args.dataset / 'tasks.json'}; "
        f"{sum(s['written'] for k, s in summaries.items() if k != 'not_in_tables')} labelled ECGs"
    )
    return 0


def run_tasks(args: argparse.Namespace) -> int:
    """``fgclep eval tasks``: every task, its classes and whether its shards are present."""
    folders = {"merl": args.merl_data, "ludb": args.ludb_data, "synth": args.synth_data}
    for name in ALL_TASKS:
        # a local corpus is generated on first use, so only listed here; a URL is read (missing: "not built")
        if (
            name.startswith("synth")
            and not is_url(args.synth_data)
            and not (Path(args.synth_data) / "test").is_dir()
        ):
            print(f"{name}: synthetic corpus not generated yet ({args.synth_data}; generated on first use)")
            continue
        try:
            task = get_task(name, folders[task_family(name)])
        except FileNotFoundError as e:
            print(f"{name}: not built ({e})")
            continue
        print(f"{name}: {len(task.class_names)} classes, label key {task.label_key!r}; {task.description}")
    return 0


# EvalSettings field -> option of the linear-probe subcommands (zeroshot leaves the settings' defaults)
LINEAR_OPTIONS = {
    "fractions": "fractions",
    "repeats": "repeats",
    "probe_epochs": "epochs",
    "merl_selection": "merl_selection",
}


def task_family(name: str) -> str:
    """``merl``, ``ludb`` or ``synth``: which data folder task ``name`` reads."""
    return "merl" if name in MERL_TASKS else "ludb" if name in LUDB_TASKS else "synth"


def settings_from_args(args: argparse.Namespace, protocols: tuple[str, ...]) -> EvalSettings:
    """The :class:`~.api.EvalSettings` of a parsed ``fgclep eval zeroshot | linear | all`` command line."""
    from .api import EvalSettings  # imported here: the API loads torch, and `fgclep` imports this module

    return EvalSettings(
        checkpoints=dict(map(parse_checkpoint, args.checkpoint)),
        tasks=args.task,
        protocols=protocols,
        model=args.model,
        merl_data=args.merl_data,
        ludb_data=args.ludb_data,
        synth_data=args.synth_data,
        cache=None if args.no_cache else (args.cache or str(Path(args.out) / "embeddings")),
        bootstrap=args.bootstrap,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        workers=args.workers,
        progress=not args.quiet,
        prompt_sets=args.prompt_set,
        figures=str(Path(args.out) / "figures") if args.figures else None,
        **{field: getattr(args, name) for field, name in LINEAR_OPTIONS.items() if hasattr(args, name)},
    )


def run_eval(args: argparse.Namespace) -> int:
    """``fgclep eval zeroshot | linear | all``: evaluate, write results.json + results.md, print the table."""
    from .api import evaluate  # imported here: the API loads torch, and `fgclep` imports this module

    protocols = {"zeroshot": ("zeroshot",), "linear": ("linear",), "all": ("zeroshot", "linear")}[
        args.eval_command
    ]
    rows = evaluate(settings_from_args(args, protocols))
    if process_index()[0] != 0:  # under a launcher every process holds the same rows: rank 0 writes them
        return 0
    meta = {
        "written": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "command": "fgclep " + " ".join(sys.argv[1:])
        if sys.argv and "fgclep" in sys.argv[0]
        else "fgclep eval",
        "bootstrap": args.bootstrap,
        "seed": args.seed,
        "model": args.model,
    }
    paths = write_results(args.out, rows, meta)
    table = format_markdown(rows, meta).split("\n## Per class")[0]
    print(table)
    print(f"\nwritten: {paths['json']}, {paths['md']}")
    return 0


def _add_data_folders(p: argparse.ArgumentParser) -> None:
    """Where the task shards live: ``--merl-data``, ``--ludb-data``, ``--synth-data``."""
    p.add_argument("--merl-data", default=MERL_DATA, help="folder given to `fgclep eval build --out`")
    p.add_argument("--ludb-data", default=LUDB_DATA, help="the LUDB shards")
    p.add_argument("--synth-data", default=SYNTH_DATA, help="the synthetic corpus (generated if missing)")


def _add_eval_options(p: argparse.ArgumentParser, linear: bool, zeroshot: bool) -> None:
    add_model_arguments(p, multiple=True)
    p.add_argument("--task", action="append", required=True, choices=ALL_TASKS, help="task (repeatable)")
    _add_data_folders(p)
    add_out_argument(p, "folder of results.json / results.md", default="runs/eval")
    p.add_argument("--cache", default=None, help="embedding cache folder (default OUT/embeddings)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    p.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap resamples of the test records (0: none)"
    )
    add_run_arguments(p, 64, "ECGs per encoder batch", "seed of the bootstrap, subsets and heads")
    if zeroshot:
        p.add_argument(
            "--prompt-set",
            action="append",
            choices=("templates", "ens", "ckepe"),
            default=None,
            help="prompt set (repeatable; default: templates, ens, and ckepe on MERL tasks)",
        )
    else:
        p.set_defaults(prompt_set=None)
    if linear and zeroshot:
        p.add_argument(
            "--figures",
            action="store_true",
            help="also draw the t-SNE and similarity figures into OUT/figures/",
        )
    else:
        p.set_defaults(figures=False)
    if linear:
        p.add_argument(
            "--fractions", type=float, nargs="+", default=[1.0, 10.0, 100.0], help="%% of train labels"
        )
        p.add_argument("--repeats", type=int, default=5, help="seeds per fraction below 100 %%")
        p.add_argument("--epochs", type=int, default=100, help="head training epochs (the epoch is selected)")
        p.add_argument(
            "--merl-selection",
            action="store_true",
            help="reproduce MERL: lr 1e-3, wd 1e-4, batch 16, 100 epochs, report the MAXIMUM TEST AUC over "
            "epochs (selection on test, inflated; the same run's val-selected AUC is reported beside it)",
        )


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``fgclep eval``."""
    p = add_command(
        subparsers,
        "eval",
        "evaluate checkpoints: MERL benchmark tasks, zero-shot (templates / CKEPE / ENS), linear probe",
        "Benchmark evaluation. Zero-shot: macro AUC with per-class positives and a 95 % bootstrap "
        "interval, prompt sets templates / ckepe (MERL's strings) / ens (the paper's lead ensemble). Linear "
        "probe: frozen cached embeddings, a BCE head at 1 / 10 / 100 % of the training labels, selected on "
        "validation. Results go to OUT/results.json and OUT/results.md.",
        epilog=EXAMPLES,
    )
    sub = p.add_subparsers(dest="eval_command", required=True, metavar="SUBCOMMAND")

    b = add_command(
        sub,
        "build",
        "labelled MERL task shards from a raw PTB-XL / CPSC2018 / CSN folder",
        "Convert the records of the MERL split tables (train / val / test) with the project's "
        "reader for DATASET; each sample's json gets its table row's classes under labels['merl_<task>']. "
        "Table rows whose record is missing are listed in the rejects file. Resumable.",
    )
    b.add_argument("dataset", choices=MERL_DATASETS, help="ptbxl (super/sub/form/rhythm), cpsc2018 or csn")
    b.add_argument("--root", required=True, help="the raw dataset folder (PhysioNet layout)")
    b.add_argument(
        "--benchmarks",
        required=True,
        help="folder with merl_splits/, dataset_class_names.json and CKEPE_prompt.json (from the MERL repo)",
    )
    add_out_argument(b, "shards go to OUT/DATASET/", default=MERL_DATA)
    b.add_argument(
        "--option",
        type=parse_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="reader option, e.g. rate=100 for PTB-XL's records100 (default 500, as MERL)",
    )
    b.add_argument("--maxcount", type=int, default=1000, help="ECGs per shard")
    add_workers_argument(b)
    b.add_argument(
        "--min-seconds", type=float, default=MIN_SECONDS, help="reject records shorter than this (s)"
    )
    add_quiet_argument(b)
    b.set_defaults(func=run_build)

    t = add_command(sub, "tasks", "list the tasks")
    _add_data_folders(t)
    t.set_defaults(func=run_tasks)

    for name, helptext, lin, zs in (
        ("zeroshot", "zero-shot macro AUC per prompt set", False, True),
        ("linear", "linear probe at 1 / 10 / 100 % of the training labels", True, False),
        ("all", "zero-shot and linear probe", True, True),
    ):
        q = add_command(sub, name, helptext.replace("%", "%%"), epilog=EXAMPLES)
        _add_eval_options(q, lin, zs)
        q.set_defaults(func=run_eval)
