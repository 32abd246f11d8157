"""``fgclep demo``: the whole FG-CLEP method on the embedded data, one command, one table.

- :mod:`.cli`: the flags and the entry point; :mod:`.config`: the demo's fixed choices (``--fast``, runs, tasks);
- :mod:`.runner`: the stage runner (settings manifests in ``OUT/.demo/``; a re-run resumes);
- :mod:`.stages`: stage 1, stage 2, stage 3, the evaluation and figures; :mod:`.pipeline`: the whole demo;
- :mod:`.report`: the table, the learning curve, ``results.md`` / ``results.json``.

:func:`checkpoint_paths` names every checkpoint the demo writes (``checkpoint_path(out, run, epochs)`` one).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .cli import DESCRIPTION, add_arguments, add_cli, apply_fast, main
from .config import COLUMNS, DEMO_FNM_LAMBDA, FAST, KEEP_ALL, PROBE_TASKS, RUN_LABELS, RUNS, ZS_TASKS

# Imported on first use (see __getattr__): these modules load torch and open_clip, and the ``fgclep`` command
# imports this package to build its parser (start-up time).
_LAZY = {
    "checkpoint_paths": "pipeline",
    "run_demo": "pipeline",
    "demo_table": "report",
    "format_curve": "report",
    "format_table": "report",
    "Stages": "runner",
    **dict.fromkeys(
        (
            "checkpoint_path",
            "evaluate_all",
            "figures",
            "launch_command",
            "parse_generator",
            "read_curve",
            "run",
            "stage1",
            "stage2",
            "stage3_input",
            "train_run",
            "untrained_auc",
        ),
        "stages",
    ),
}


def __getattr__(name: str) -> Any:
    """The names of :mod:`.pipeline`, :mod:`.report`, :mod:`.runner` and :mod:`.stages`, imported on first use."""
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
