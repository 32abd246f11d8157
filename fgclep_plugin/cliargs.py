"""The pieces every ``fgclep`` subcommand shares: help formatter, argument groups, option parsers.

One convention for all commands: ``--data`` names shard input, ``--model`` / ``--checkpoint`` the model
(``--checkpoint none`` = random initial weights; no command that scores falls back to them silently),
``--out``, ``--batch-size``, ``--device`` / ``--precision`` / ``--workers`` (every command that embeds), ``--quiet``. Imports nothing from the package's layers, so any
subcommand module may use it.
"""

from __future__ import annotations

import argparse
import json
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from typing import Any

from .defaults import DEFAULT_MODEL

DISTRIBUTION = "fgclep-plugin"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every subcommand's help: defaults shown, descriptions and epilogs printed as written."""


def package_version() -> str:
    """The installed distribution's version (``0+unknown`` when run from an uninstalled tree)."""
    try:
        return _dist_version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0+unknown"


def add_version_argument(p: argparse.ArgumentParser) -> None:
    """``--version``: print ``fgclep VERSION`` and exit."""
    p.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")


def add_command(
    sub: argparse._SubParsersAction, name: str, help: str, description: str | None = None, **kw: Any
) -> argparse.ArgumentParser:
    """A subcommand with the shared help formatter (``description`` defaults to ``help``; ``%%`` in ``help``)."""
    return sub.add_parser(
        name,
        help=help,
        description=description or help.replace("%%", "%"),
        formatter_class=HelpFormatter,
        **kw,
    )


# ---------------------------------------------------------------------------------------------------------
# Value parsers.


def parse_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> (key with ``-`` as ``_``, VALUE parsed as JSON when it is JSON, else the string)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--option takes key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip().replace("-", "_"), parsed


def options(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """``{name: args.name}`` of each of ``names``: the parsed options a command passes on under their own names."""
    return {name: getattr(args, name) for name in names}


def parse_checkpoint_path(text: str) -> str | None:
    """A checkpoint path, or ``none`` -> None (the model's random initial weights, asked for explicitly)."""
    return None if text == "none" else text


# ---------------------------------------------------------------------------------------------------------
# Argument groups.


class _DataAlias(argparse.Action):
    """``--data`` and the positional shard spec kept as its alias (``fgclep info SHARDS``): one of the two."""

    def __call__(self, parser, namespace, values, option_string=None):
        if values is None:  # the optional positional matched nothing
            return
        if getattr(namespace, "data", None) is not None:
            parser.error("give the shards once: --data SHARDS or positionally")
        namespace.data = values


def add_data_argument(
    p: argparse.ArgumentParser, help: str, *, required: bool = True, positional_alias: bool = False
) -> None:
    """``--data SHARDS``: shard input (brace ranges, ``::`` joins sets). ``positional_alias``: the shard spec
    may also be given positionally (older ``info`` / ``show`` usage); then :func:`check_data` enforces
    ``required`` after parsing."""
    if not positional_alias:
        p.add_argument("--data", required=required, default=None, help=help)
    else:
        p.add_argument("--data", action=_DataAlias, default=None, help=help)
        p.add_argument(
            "data_positional",
            nargs="?",
            metavar="DATA",
            action=_DataAlias,
            default=None,
            help="the same as --data",
        )
        if required:
            p.set_defaults(_data_required_by=p)


def check_data(args: argparse.Namespace) -> None:
    """Usage error (exit 2) when a command with a positional ``--data`` alias got neither form."""
    parser = getattr(args, "_data_required_by", None)
    if parser is not None and getattr(args, "data", None) is None:
        parser.error("the following arguments are required: --data (or the shards positionally)")


def add_model_arguments(
    p: argparse.ArgumentParser, data_help: str | None = None, *, multiple: bool = False
) -> None:
    """``[--data SHARDS] --model NAME --checkpoint CKPT``: what every command that scores takes.

    ``--checkpoint`` is required (``none``: random initial weights). ``multiple``: repeatable
    ``[LABEL=]CKPT`` strings (``fgclep eval`` compares checkpoints side by side) instead of one path.
    """
    if data_help is not None:
        add_data_argument(p, data_help)
    p.add_argument("--model", default=DEFAULT_MODEL, help="open_clip model config name")
    if multiple:
        p.add_argument(
            "--checkpoint",
            action="append",
            required=True,
            metavar="[LABEL=]CKPT",
            help="open_clip checkpoint (repeatable: CLEP and FG-CLEP side by side); 'none' = random weights",
        )
    else:
        p.add_argument(
            "--checkpoint",
            required=True,
            type=parse_checkpoint_path,
            metavar="CKPT",
            help="open_clip checkpoint; 'none' = the model's random initial weights",
        )


def add_out_argument(
    p: argparse.ArgumentParser, help: str, default: str | None = None, *, required: bool | None = None
) -> None:
    """``--out``: required unless ``default`` is given (or ``required=False``: an optional output)."""
    p.add_argument(
        "--out", required=default is None if required is None else required, default=default, help=help
    )


def add_quiet_argument(p: argparse.ArgumentParser) -> None:
    """``--quiet``: no progress bars."""
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_batch_size_argument(
    p: argparse.ArgumentParser, default: int, help: str, *, batch_alias: bool = False
) -> None:
    """``--batch-size``; ``batch_alias`` keeps an older ``--batch`` spelling working (hidden from help)."""
    p.add_argument("--batch-size", type=int, default=default, help=help)
    if batch_alias:
        p.add_argument(
            "--batch", type=int, dest="batch_size", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )


def add_device_argument(p: argparse.ArgumentParser | argparse._ArgumentGroup, default: str = "cpu") -> None:
    """``--device``: torch device of the model."""
    p.add_argument("--device", default=default, help="torch device, e.g. cpu or cuda:0")


SYNTH_FEATURES = "synth-features"
"""A ``--prompts`` value: the simulator's canonical feature phrases as the classes' query texts."""

EMBED_PRECISIONS = ("fp32", "amp", "amp_bf16")
"""``--precision`` of the embedding commands (open_clip names; ``bf16``/``fp16`` cast only Conv/Linear weights)."""


def add_compute_arguments(p: argparse.ArgumentParser, workers: int = 2) -> None:
    """Where and how a command that embeds runs its model, one argument group: ``--device`` (``auto``: CUDA
    device ``LOCAL_RANK`` when CUDA is available, else the CPU), ``--precision``, ``--workers`` (DataLoader
    processes decoding and transforming shards while the encoder runs)."""
    g = p.add_argument_group("compute")
    g.add_argument(
        "--device",
        default="auto",
        help="torch device, e.g. cpu or cuda:0; auto: cuda:LOCAL_RANK when CUDA is available, else cpu",
    )
    g.add_argument("--precision", choices=EMBED_PRECISIONS, default="fp32", help="open_clip precision")
    add_workers_argument(g, "DataLoader processes decoding shards (0: the main process)", workers)


def add_seed_argument(p: argparse.ArgumentParser, help: str = "random seed", default: int = 0) -> None:
    """``--seed``."""
    p.add_argument("--seed", type=int, default=default, help=help)


def add_run_arguments(
    p: argparse.ArgumentParser, batch_size: int, batch_help: str, seed_help: str, *, batch_alias: bool = False
) -> None:
    """How a command that scores runs the model: ``--seed``, ``--batch-size``, ``--quiet`` and the compute group
    (:func:`add_compute_arguments`)."""
    add_seed_argument(p, seed_help)
    add_batch_size_argument(p, batch_size, batch_help, batch_alias=batch_alias)
    add_compute_arguments(p)
    add_quiet_argument(p)


def add_workers_argument(
    p: argparse.ArgumentParser | argparse._ArgumentGroup,
    help: str = "parallel reader processes",
    default: int = 1,
) -> None:
    """``--workers``."""
    p.add_argument("--workers", type=int, default=default, help=help)


def add_summary_json_argument(p: argparse.ArgumentParser) -> None:
    """``--summary-json``: also write the command's summary to a JSON file."""
    p.add_argument("--summary-json", default=None, help="also write the summary to this JSON file")
