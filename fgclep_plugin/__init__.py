"""FG-CLEP as a plugin for open_clip.

``import fgclep_plugin`` is cheap: it does not import torch or open_clip. It registers the plugin with
open_clip (model configs, ECG tower, ECG transforms, offline tokenizers; see ``fgclep_plugin.model.registry``) as
soon as open_clip is imported, or at once if open_clip already is. ``register()`` does it explicitly.

``fgclep_plugin.classify(files, model=..., checkpoint=..., classes=[...])`` classifies ECG files
(:func:`fgclep_plugin.deploy.classify.classify`); it is imported on first use.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import Any

__all__ = ["classify", "register"]


def register() -> None:
    """Register the plugin with open_clip (idempotent; imports open_clip)."""
    # imported here: it imports open_clip, and ``import fgclep_plugin`` stays cheap
    from .model.registry import register as _register

    _register()


def __getattr__(name: str) -> Any:
    """``classify``, imported on first use (it imports the readers; torch when it runs)."""
    if name == "classify":
        from .deploy.classify import classify  # on first use: ``import fgclep_plugin`` stays cheap

        return classify
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _RegisterAfterOpenClipImport(importlib.abc.MetaPathFinder):
    """Import hook: once the ``open_clip`` package has finished importing, call :func:`register`."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "open_clip":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # one shot; lets the other finders locate the real package
        spec = importlib.util.find_spec(fullname)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_register(module) -> None:
            exec_module(module)
            registry = sys.modules.get(f"{__name__}.model.registry")
            if registry is None or hasattr(registry, "register"):  # not mid-import of the registry itself
                register()

        loader.exec_module = exec_then_register
        return spec


if "open_clip" in sys.modules:
    register()
elif not any(isinstance(f, _RegisterAfterOpenClipImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterOpenClipImport())
