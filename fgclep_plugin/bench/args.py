"""The parser a ``python -m fgclep_plugin.bench.NAME`` benchmark starts from: its program name, the first
paragraph of its module docstring as description, the shared help formatter, and the model it times."""

from __future__ import annotations

import argparse

from ..cliargs import HelpFormatter
from ..defaults import DEFAULT_MODEL


def bench_parser(name: str, doc: str, checkpoint_help: str | None = None) -> argparse.ArgumentParser:
    """Parser of ``python -m fgclep_plugin.bench.NAME`` with ``--model``; with ``checkpoint_help`` (what the
    checkpoint is), also ``--checkpoint`` (default none: random weights, which a speed does not depend on)."""
    p = argparse.ArgumentParser(
        prog=f"python -m fgclep_plugin.bench.{name}",
        description=doc.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help="open_clip model config name")
    if checkpoint_help is not None:
        p.add_argument("--checkpoint", default=None, help=f"{checkpoint_help} (speed does not depend on it)")
    return p
