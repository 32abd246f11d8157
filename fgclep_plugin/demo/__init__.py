"""``fgclep demo``: the whole FG-CLEP method on the embedded data, one command, one table.

- :mod:`.cli`: the flags and the entry point; :mod:`.config`: the demo's fixed choices (``--fast``, runs, tasks);
- :mod:`.runner`: the stage runner (settings manifests in ``OUT/.demo/``; a re-run resumes);
- :mod:`.stages`: stage 1, stage 2, stage 3, the evaluation and figures; :mod:`.pipeline`: the whole demo;
- :mod:`.report`: the table, the learning curve, ``results.md`` / ``results.json``.

:func:`checkpoint_paths` names every checkpoint the demo writes (``checkpoint_path(out, run, epochs)`` one).
"""

from __future__ import annotations

from .cli import DESCRIPTION, add_arguments, add_cli, apply_fast, main
from .config import COLUMNS, DEMO_FNM_LAMBDA, FAST, KEEP_ALL, PROBE_TASKS, RUN_LABELS, RUNS, ZS_TASKS
from .pipeline import checkpoint_paths, run_demo
from .report import demo_table, format_curve, format_table
from .runner import Stages
from .stages import (
    checkpoint_path,
    evaluate_all,
    figures,
    launch_command,
    parse_generator,
    read_curve,
    run,
    stage1,
    stage2,
    stage3_input,
    train_run,
    untrained_auc,
)

__all__ = [
    "COLUMNS",
    "DEMO_FNM_LAMBDA",
    "DESCRIPTION",
    "FAST",
    "KEEP_ALL",
    "PROBE_TASKS",
    "RUNS",
    "RUN_LABELS",
    "ZS_TASKS",
    "Stages",
    "add_arguments",
    "add_cli",
    "apply_fast",
    "checkpoint_path",
    "checkpoint_paths",
    "demo_table",
    "evaluate_all",
    "figures",
    "format_curve",
    "format_table",
    "launch_command",
    "main",
    "parse_generator",
    "read_curve",
    "run",
    "run_demo",
    "stage1",
    "stage2",
    "stage3_input",
    "train_run",
    "untrained_auc",
]
