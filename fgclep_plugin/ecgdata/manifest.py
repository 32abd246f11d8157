"""Settings manifests: what a resumable step was run with, so a re-run can resume it or say what changed.

A manifest is a JSON object of a step's settings and the identity of its inputs. ``fgclep shards``,
``fgclep augment`` and the demo's stages each write one beside their outputs; a later run with an equal
manifest resumes, one with a different manifest either refuses (:func:`claim`, the commands never delete) or
re-runs (the demo), naming the keys that changed (:func:`changed_keys`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .atomic import atomic_write_json


def checkpoint_id(path: str | os.PathLike | None) -> dict[str, Any] | None:
    """The identity of a model checkpoint as manifests record it: absolute path, size in bytes and the sha256 of
    its content (another checkpoint of the same size is another input).

    This is the one place that decides when two checkpoints count as the same input; every manifest that
    records a checkpoint follows. None (random initial weights) -> None.
    """
    if path is None:
        return None
    return {"path": os.path.abspath(path), "bytes": os.path.getsize(path), "sha256": file_sha256(path)}


_SHA256: dict[tuple[str, int, int, int], str] = {}  # (path, size, mtime_ns, inode) -> digest, this process


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file's content, hashed once per (path, size, mtime, inode) in a process: a
    multi-gigabyte checkpoint named by several manifests of one run is read once; a replaced file is read again."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _SHA256:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA256[key] = h.hexdigest()
    return _SHA256[key]


def canonical(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples -> lists, paths -> strings), so a fresh manifest compares
    equal to the stored one."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def digest(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (first 16 hex digits)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read(path: str | Path) -> dict[str, Any] | None:
    """The stored manifest at ``path``, or None when there is none."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None


def changed_keys(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """Sorted top-level keys whose values differ between two manifests (present in only one counts)."""
    old, new = canonical(old or {}), canonical(new)
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def claim(path: str | Path, manifest: dict[str, Any], refusal: str) -> None:
    """Write ``manifest`` at ``path``, or check it against the stored one: equal -> resume (nothing to do);
    different -> RuntimeError ``"{refusal} ({changed keys}; PATH); choose another --out or delete them"``."""
    old = read(path)
    if old is None:
        atomic_write_json(path, manifest)
        return
    changed = changed_keys(old, manifest)
    if changed:
        raise RuntimeError(
            f"{refusal} ({', '.join(changed)} differ; {path}); choose another --out or delete them"
        )
