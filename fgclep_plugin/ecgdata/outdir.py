"""Output folders: checked writable before any work, and cleared of temporary files left by killed runs."""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def check_writable_folder(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and prove a file can be written in it; else ``RuntimeError`` in one line
    (a command stops before any work instead of failing with a traceback after it)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".fgclep-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise RuntimeError(f"{what} {folder} is not writable ({e.strerror or e})") from None
    return folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Remove ``.NAME.tmp-PID`` files (atomic writes of ``NAME`` cut short) whose writer ``PID`` is gone."""
    removed = []
    for name in names:
        for path in Path(folder).glob(f".{glob.escape(name)}.tmp-*"):
            pid = path.name.rsplit("-", 1)[-1]
            if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
                continue  # a running writer's file
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
