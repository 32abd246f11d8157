"""Dataset readers ("sources"): each yields :class:`fgclep_plugin.ecgdata.records.EcgRecord` objects.

A source has ``name``, ``items()`` (sorted, cheap, picklable refs) and ``load(item)`` (the expensive read, raising
:class:`fgclep_plugin.ecgdata.records.RejectError` that names the file). Sources return signals as found, in mV, with
the lead names as found; :func:`fgclep_plugin.ecgdata.ecg.canonicalize` does the rest. Build one with
:func:`make_source`; ``source_options_help(name)`` describes its options.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from .base import Source, patient_split
from .challenge import ALIAS_DEFAULTS, ChallengeSource
from .generic import GenericSource
from .ludb import LudbSource
from .mimic import MimicSource
from .ptbdb import PtbdbSource
from .ptbxl import PtbxlSource

SOURCES: dict[str, type] = {
    "mimic": MimicSource,
    "ptbxl": PtbxlSource,
    "challenge": ChallengeSource,
    "cpsc2018": ChallengeSource,
    "csn": ChallengeSource,
    "chapman": ChallengeSource,
    "ningbo": ChallengeSource,
    "georgia": ChallengeSource,
    "ptbxl-hr": ChallengeSource,
    "code15": ChallengeSource,
    "ludb": LudbSource,
    "ptbdb": PtbdbSource,
    "generic": GenericSource,
}


def make_source(name: str, root: str | Path, **options: Any) -> Source:
    """Build source ``name`` (a key of :data:`SOURCES`) over ``root`` with its ``options`` (key=value)."""
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; choose one of {', '.join(sorted(SOURCES))}")
    cls = SOURCES[name]
    if cls is ChallengeSource:
        options = {**ALIAS_DEFAULTS.get(name, {}), "dataset": name, **options}
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "root"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(
            f"source {name!r} has no option(s) {', '.join(unknown)}; options: {', '.join(sorted(accepted))}"
        )
    return cls(root, **options)


def source_options_help(name: str | None = None) -> str:
    """Help text: the options of source ``name``, or a summary line per source."""
    if name is not None:
        cls = SOURCES[name]
        return inspect.cleandoc(cls.__doc__ or "")
    lines = []
    for key, cls in SOURCES.items():
        first = inspect.cleandoc(cls.__doc__ or "").splitlines()[0] if cls.__doc__ else ""
        if cls is ChallengeSource and key != "challenge":
            defaults = ", ".join(f"{k}={v}" for k, v in ALIAS_DEFAULTS.get(key, {}).items())
            first = f"the 'challenge' reader with dataset={key}" + (f", {defaults}" if defaults else "")
        lines.append(f"{key}: {first}")
    return "\n".join(lines)


__all__ = ["SOURCES", "Source", "make_source", "patient_split", "source_options_help"]
