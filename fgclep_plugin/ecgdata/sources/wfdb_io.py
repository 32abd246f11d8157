"""Reading WFDB records (``.hea`` + ``.dat``/``.mat``) robustly, for every WFDB-based source.

Known quirk handled here: some Georgia headers (``E00666.hea``) carry the file name ``E00666.mat`` as the record
name in their first line, which ``wfdb`` rejects. The header is then rewritten in memory, written with links to
the signal files into a temporary folder and read from there; the shared files are never modified. The fix is
reported in ``WfdbData.header_fix``.

``wfdb`` (which loads pandas) is imported where a record is read, not at module import: the ``fgclep`` command
imports every source to list them in its help (start-up time).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..records import RejectError

if TYPE_CHECKING:
    import wfdb

# What wfdb raises on broken or inconsistent files (HeaderSyntaxError is a ValueError).
_WFDB_ERRORS = (ValueError, OSError, IndexError, KeyError, TypeError, EOFError, AttributeError)
_UNIT_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3, "nv": 1e-6}


@dataclass
class WfdbData:
    """A WFDB record as read: ``signal`` ``[n_leads, n]`` (mV if physical, else the stored integers)."""

    path: Path
    signal: np.ndarray
    fs: float
    lead_names: list[str]
    comments: list[str]
    adc_gain: list[float]
    baseline: list[int]
    units: list[str]
    header_fix: str | None = None
    extra: dict = field(default_factory=dict)


def discover_records(root: str | Path) -> list[str]:
    """Record paths (posix, relative to ``root``, without ``.hea``) of every header under ``root``, sorted."""
    root = Path(root)
    found = [p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.hea") if p.is_file()]
    return sorted(found, key=_natural_key)


def _natural_key(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _fixed_header_text(hea: Path) -> tuple[str, str] | None:
    """If the record line names the record with a file extension, return (fixed text, description)."""
    text = hea.read_text(errors="replace")
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        tokens = line.split()
        name = tokens[0]
        stem = name.split("/")[0]
        stem_noext = re.sub(r"\.(mat|dat|hea)$", "", stem, flags=re.IGNORECASE)
        if stem_noext != stem:
            tokens[0] = name.replace(stem, stem_noext, 1)
            lines[i] = " ".join(tokens)
            return "\n".join(lines) + "\n", f"record name {stem!r} in the header line read as {stem_noext!r}"
        return None
    return None


def _read_with_fixed_header(path: Path, physical: bool) -> tuple[wfdb.Record, str]:
    import wfdb  # start-up time (module docstring)

    hea = path.with_suffix(".hea")
    fixed = _fixed_header_text(hea)
    if fixed is None:
        raise RejectError("bad-header", f"{hea}: header cannot be parsed")
    text, fix = fixed
    with tempfile.TemporaryDirectory(prefix="fgclep-wfdb-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / hea.name).write_text(text)
        header = wfdb.rdheader(str(tmp_path / path.name))
        for fname in sorted(set(header.file_name or [])):
            src = path.parent / fname
            dst = tmp_path / fname
            if not src.exists():
                raise RejectError("unreadable", f"{path}.hea: signal file {src} not found")
            try:
                os.symlink(src.resolve(), dst)
            except OSError:
                shutil.copyfile(src, dst)
        rec = wfdb.rdrecord(str(tmp_path / path.name), physical=physical)
    return rec, fix


def read_header(path: str | Path) -> wfdb.Record:
    """The header of record ``path`` (no extension) or RejectError naming the file."""
    import wfdb  # start-up time (module docstring)

    path = Path(path)
    hea = path.with_suffix(".hea") if path.suffix != ".hea" else path
    if not hea.exists():
        raise RejectError("missing-file", f"{hea} not found")
    try:
        return wfdb.rdheader(str(hea.with_suffix("")))
    except _WFDB_ERRORS:
        fixed = _fixed_header_text(hea)
        if fixed is None:
            raise RejectError("bad-header", f"{hea}: header cannot be parsed") from None
        with tempfile.TemporaryDirectory(prefix="fgclep-wfdb-") as tmp:
            (Path(tmp) / hea.name).write_text(fixed[0])
            return wfdb.rdheader(str(Path(tmp) / hea.stem))


def read_wfdb(path: str | Path, physical: bool = True) -> WfdbData:
    """Read record ``path`` (without extension). ``physical``: mV with NaN for invalid samples; else integers.

    Raises :class:`RejectError` (``missing-file``, ``unreadable``, ``bad-header``, ``bad-units``) naming the file.
    """
    import wfdb  # start-up time (module docstring)

    path = Path(path)
    if path.suffix == ".hea":
        path = path.with_suffix("")
    hea = Path(f"{path}.hea")
    if not hea.exists():
        raise RejectError("missing-file", f"{hea} not found")
    fix = None
    try:
        try:
            rec = wfdb.rdrecord(str(path), physical=physical)
        except FileNotFoundError as exc:
            raise RejectError("unreadable", f"{hea}: signal file {exc.filename or exc} not found") from None
        except _WFDB_ERRORS as first:
            if _fixed_header_text(hea) is None:
                raise RejectError("unreadable", f"{hea}: {type(first).__name__}: {first}") from None
            rec, fix = _read_with_fixed_header(path, physical)
    except RejectError:
        raise
    except _WFDB_ERRORS as exc:
        raise RejectError("unreadable", f"{hea}: {type(exc).__name__}: {exc}") from None
    names = [str(n) for n in (rec.sig_name or [])]
    units = [str(u or "mV") for u in (rec.units or ["mV"] * len(names))]
    if physical:
        data = rec.p_signal
        if data is None:
            raise RejectError("unreadable", f"{hea}: no signal")
        sig = np.asarray(data, dtype=np.float64).T.copy()
        for i, unit in enumerate(units):
            scale = _UNIT_TO_MV.get(unit.strip().lower())
            if scale is None:
                raise RejectError("bad-units", f"{hea}: lead {names[i]} has units {unit!r}, not a voltage")
            if scale != 1.0:
                sig[i] *= scale
    else:
        data = rec.d_signal
        if data is None:
            raise RejectError("unreadable", f"{hea}: no signal")
        sig = np.asarray(data).T.copy()
    return WfdbData(
        path=path,
        signal=sig,
        fs=float(rec.fs),
        lead_names=names,
        comments=[str(c) for c in (rec.comments or [])],
        adc_gain=[float(g) for g in (rec.adc_gain or [])],
        baseline=[int(b) for b in (rec.baseline or [])],
        units=units,
        header_fix=fix,
    )


def comment_fields(comments: list[str]) -> dict[str, str]:
    """``key: value`` header comments as a dict with lower-case keys (``"# Dx: 1,2"`` -> ``{"dx": "1,2"}``)."""
    out: dict[str, str] = {}
    for line in comments:
        s = line.strip().lstrip("#").strip()
        key, sep, value = s.partition(":")
        if sep and key.strip():
            out.setdefault(key.strip().lower(), value.strip())
    return out
