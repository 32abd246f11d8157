"""The stage runner: named, resumable stages, each recorded by a settings manifest in ``OUT/.demo/``.

A stage is done when its manifest (its settings + the digests of the stages it reads) matches and its outputs
exist; a re-run skips it, and re-runs a stage whose settings or inputs changed (and, through the digests, every
stage that reads it).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..ecgdata import manifest as manifests
from ..ecgdata.atomic import atomic_write_json


class Stages:
    """Runs named stages in ``out``, skipping those whose ``.demo/<name>.json`` manifest matches."""

    def __init__(self, out: str | Path, log: Callable[[str], None] = print):
        self.out = Path(out)
        self.state = self.out / ".demo"
        self.state.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.digests: dict[str, str] = {}
        self.ran: list[str] = []
        self.seconds: dict[str, float] = {}

    def run(
        self,
        name: str,
        settings: dict[str, Any],
        inputs: list[str],
        outputs: Sequence[str | Path],
        fn: Callable[[], Any],
        clear: Sequence[str | Path] = (),
    ) -> str:
        """Run ``fn`` unless done; ``inputs`` are names of earlier stages; ``clear`` is removed before a
        (re-)run (partial or stale outputs). Returns the stage's digest."""
        manifest = {"settings": settings, "inputs": {i: self.digests[i] for i in inputs}}
        d = manifests.digest(manifest)
        path = self.state / f"{name}.json"
        old = manifests.read(path)
        if old is not None and old.get("digest") == d and all(Path(o).exists() for o in outputs):
            self.log(f"[{name}] done earlier with the same settings (manifest {path.name}): skipped")
        else:
            if old is not None and old.get("digest") != d:
                changed = manifests.changed_keys(old.get("settings"), settings)
                changed += manifests.changed_keys(old.get("inputs"), manifest["inputs"])
                self.log(
                    f"[{name}] settings or inputs changed ({', '.join(changed) or 'inputs'}): re-running"
                )
            path.unlink(missing_ok=True)
            for c in clear:
                if Path(c).is_dir():
                    shutil.rmtree(c)
                elif Path(c).exists():
                    Path(c).unlink()
            self.log(f"[{name}] running ...")
            t0 = time.time()
            fn()
            self.seconds[name] = round(time.time() - t0, 1)
            missing = [str(o) for o in outputs if not Path(o).exists()]
            if missing:
                raise RuntimeError(f"stage {name} finished without its outputs: {', '.join(missing)}")
            atomic_write_json(path, {**manifest, "digest": d, "seconds": self.seconds[name]})
            self.ran.append(name)
            self.log(f"[{name}] finished in {self.seconds[name]:.0f} s")
        self.digests[name] = d
        return d
