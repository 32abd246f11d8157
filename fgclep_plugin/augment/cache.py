"""The candidate cache: a directory of append-only JSON-lines part files, one per writing process.

Each process appends to ``part-<index>-of-<n>.jsonl`` (``index``/``n`` from ``--shard-index``/``--num-shards``
or ``RANK``/``WORLD_SIZE``). One line per report::

    {"key", "backend", "model", "prompt_version", "report", "features": [...],
     "status": "ok" | "empty" | "unparsable" | "error", "raw": "<answer text, truncated>"}

An entry's identity is (key, backend, model, prompt_version); later lines win. A partial last line (a killed
run) is ignored on read and cut off before the next append, so a resumed run never glues a new line onto it.
Entries with status ``error`` (the request failed) are not answers: they are retried by the next run and left
out of :func:`load_candidates`.
"""

from __future__ import annotations

import fcntl
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STATUSES = ("ok", "empty", "unparsable", "error")
RAW_CHARS = 2000


def part_name(index: int, n: int) -> str:
    """File name of process ``index`` of ``n``'s part."""
    return f"part-{index:05d}-of-{n:05d}.jsonl"


def entry_problem(entry: object) -> str | None:
    """Why a parsed cache line is not a valid entry (wrong types, unknown status), or None."""
    if not isinstance(entry, dict):
        return f"a JSON {type(entry).__name__}, not an object"
    for field in ("key", "backend", "model", "prompt_version"):
        if not isinstance(entry.get(field), str):
            return f"'{field}' is {type(entry.get(field)).__name__}, not a string"
    if entry.get("status") not in STATUSES:
        return f"status {entry.get('status')!r:.40} is not one of {', '.join(STATUSES)}"
    features = entry.get("features", [])
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        return "'features' is not a list of strings"
    if not isinstance(entry.get("report", ""), str):
        return "'report' is not a string"
    return None


def _iter_part(path: Path) -> Iterator[dict[str, Any]]:
    """Valid entries of one part file; a line that is not UTF-8 JSON of a valid entry is skipped with a warning
    naming ``file:line``."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                return  # no final newline: the last line was cut by a killed writer
            if not line.strip():
                continue
            try:
                entry = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                problem = "not UTF-8 text"
            except (ValueError, RecursionError) as e:  # JSON errors, 5000-digit numbers, deep nesting
                problem = f"not JSON ({type(e).__name__}: {str(e)[:80]})"
            else:
                problem = entry_problem(entry)
            if problem:
                warnings.warn(f"{path}:{number}: cache line skipped: {problem}", stacklevel=3)
                continue
            yield entry


def iter_entries(cache_dir: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Every complete entry of every part file in ``cache_dir``, part files in name order, lines in order."""
    root = Path(cache_dir)
    if not root.is_dir():
        return
    for path in sorted(root.glob("part-*.jsonl")):
        yield from _iter_part(path)


def load_entries(
    cache_dir: str | os.PathLike, backend: str, model: str, prompt_version: str, include_errors: bool = False
) -> dict[str, dict[str, Any]]:
    """The latest entry per report key for (backend, model, prompt_version); ``error`` entries left out
    unless ``include_errors``."""
    out: dict[str, dict[str, Any]] = {}
    for e in iter_entries(cache_dir):
        if (e.get("backend"), e.get("model"), e.get("prompt_version")) != (backend, model, prompt_version):
            continue
        if e.get("status") == "error" and not include_errors:
            continue
        out[e["key"]] = e
    return out


def load_candidates(
    cache_dir: str | os.PathLike, backend: str, model: str, prompt_version: str
) -> dict[str, list[str]]:
    """Report key -> candidate features for (backend, model, prompt_version); later lines win."""
    return {
        k: list(e.get("features") or [])
        for k, e in load_entries(cache_dir, backend, model, prompt_version).items()
    }


class CandidateCache:
    """Writer for one process's part file; knows every answer already in the directory (all parts).

    Holds an exclusive lock on its part file: two processes given the same index fail fast instead of
    interleaving lines.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        backend: str,
        model: str,
        prompt_version: str,
        index: int = 0,
        n: int = 1,
    ) -> None:
        if not 0 <= index < n:
            raise ValueError(f"shard index {index} is not in [0, {n})")
        self.root = Path(cache_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.backend, self.model, self.prompt_version = backend, model, prompt_version
        self.path = self.root / part_name(index, n)
        self.features = {  # answers only (not the raw texts): small enough for millions of reports
            k: list(e.get("features") or [])
            for k, e in load_entries(self.root, backend, model, prompt_version).items()
        }
        self._file = open(self.path, "ab+")  # noqa: SIM115 (kept open for appends, closed by close())
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise RuntimeError(
                f"{self.path} is being written by another process (same shard index?)"
            ) from None
        self._cut_partial_tail()

    def _cut_partial_tail(self) -> None:
        f = self._file
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
        warnings.warn(
            f"{self.path}: dropped a partial last line ({size - keep} bytes) left by an interrupted run",
            stacklevel=3,
        )

    def __contains__(self, key: str) -> bool:
        return key in self.features

    def get(self, key: str) -> list[str] | None:
        """Cached features of report ``key``, or None if it has no answer yet."""
        f = self.features.get(key)
        return None if f is None else list(f)

    def add(self, key: str, report: str, features: list[str], status: str, raw: str = "") -> None:
        """Append one report's answer (flushed to the OS at once, so a killed run keeps it)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        entry = {
            "key": key,
            "backend": self.backend,
            "model": self.model,
            "prompt_version": self.prompt_version,
            "report": report,
            "features": list(features),
            "status": status,
            "raw": raw[:RAW_CHARS],
        }
        self._file.write((json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8"))
        self._file.flush()
        if status != "error":
            self.features[key] = list(features)

    def close(self) -> None:
        """Sync the part file to disk and release its lock."""
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def __enter__(self) -> CandidateCache:  # noqa: PYI034 (3.10 has no typing.Self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
