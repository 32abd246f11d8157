"""Writing WebDataset ECG shards from any source: parallel, streaming, atomic and resumable.

The unit of work is a shard. Shard ``k`` holds the source's items ``[k * maxcount, (k + 1) * maxcount)``
(minus the rejected ones), so the assignment of records to shards never depends on timing or on which
shards a previous run finished. A shard is written to a temporary name and renamed into place only when
complete, after its state file (sample count + rejects) has been written; a re-run skips every shard whose
``.tar`` exists and redoes the rest, so an interrupted conversion completes without duplicates.

Beside the shards: ``sizes.json`` (merged with entries of other shard sets in the same folder, as open_clip
reads it), ``NAME.rejects.jsonl`` (one line per rejected record: item, reason, message) and
``.fgclep-state/`` (per-shard state and the run's manifest).
"""

from __future__ import annotations

import glob
import hashlib
import inspect
import io
import json
import multiprocessing as mp
import os
import re
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from . import manifest as manifests
from .atomic import atomic_write_bytes, atomic_write_json
from .ecg import LEADS, N_SAMPLES, canonicalize
from .outdir import remove_stale_temporaries
from .records import CanonicalSample, EcgRecord, RejectError

STATE_DIR = ".fgclep-state"
SHARD_NUMBER = re.compile(r"%0?(\d*)d")  # the shard number in --out, e.g. %06d


class Source(Protocol):
    """What the shard writer needs of a dataset reader (see ``fgclep_plugin.ecgdata.sources``)."""

    name: str

    def items(self) -> list: ...

    def load(self, item: Any) -> EcgRecord | CanonicalSample: ...


@contextmanager
def exclusive_lock(path: str | Path, what: str, log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (waiting, with a message, while another process holds it).

    Two conversions into the same shard set (or two ``ensure_synth_corpus`` calls) then run one after the
    other: the second finds the shards complete instead of deleting the first one's temporary files.
    """
    try:
        import fcntl
    except ImportError:  # no POSIX locks on this platform
        yield
        return
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if log:
                log(f"waiting for another process writing {what} ...")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def encode_sample(key: str, ecg: np.ndarray, text: str, meta: dict[str, Any]) -> dict[str, bytes]:
    """The members of one shard sample: ``npy`` (the ECG), ``txt`` (report) and ``json`` (metadata)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(ecg), allow_pickle=False)
    return {
        "npy": buf.getvalue(),
        "txt": text.encode("utf-8"),
        "json": json.dumps(meta, sort_keys=True, default=_json_default).encode("utf-8"),
    }


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def sample_from_record(
    rec: EcgRecord, canon_opts: dict[str, Any] | None = None, require_text: bool = True
) -> tuple[str, dict[str, bytes]]:
    """Canonicalise a record and encode it as a shard sample; raises RejectError naming the record's file.

    ``require_text=False`` keeps records without a report (an empty ``txt``), for label-only sets (CODE-15).
    """
    where = f" ({rec.meta['file']})" if rec.meta.get("file") else ""
    try:
        ecg, canon_meta = canonicalize(rec, **(canon_opts or {}))
    except RejectError as e:
        raise RejectError(e.reason, f"{e.message}{where}") from None
    text = " ".join(rec.report.split())
    if not text and require_text:
        raise RejectError("empty-report", f"{rec.source}:{rec.record_id} has no report text{where}")
    meta = {
        "source": rec.source,
        "record_id": rec.record_id,
        "patient_id": rec.patient_id,
        "labels": rec.labels,
        **canon_meta,
        **rec.meta,
    }
    return rec.key, encode_sample(rec.key, ecg, text, meta)


def canonical_sample_members(s: CanonicalSample) -> dict[str, bytes]:
    """Encode an already canonical sample; a wrong shape or dtype raises ``RejectError`` naming its key."""
    shape = (len(LEADS), N_SAMPLES)
    if s.ecg.shape != shape or s.ecg.dtype != np.float16:
        raise RejectError(
            "not-canonical", f"{s.key}: ECG is {s.ecg.dtype} {tuple(s.ecg.shape)}, expected float16 {shape}"
        )
    return encode_sample(s.key, s.ecg, s.text, s.meta)


def _add_member(tar: tarfile.TarFile, name: str, data: bytes, mtime: float = 0.0) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = mtime  # fixed: identical inputs give byte-identical shards
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


_counter = None
_on_tick: Callable[[], None] | None = None


def _init_worker(counter, on_tick: Callable[[], None] | None = None) -> None:
    global _counter, _on_tick
    _counter, _on_tick = counter, on_tick


def _tick() -> None:
    if _counter is not None:
        with _counter.get_lock():
            _counter.value += 1
    if _on_tick is not None:
        _on_tick()


def write_one_shard(
    source: Source, items: list, shard_path: str, state_path: str, canon_opts: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Convert ``items`` into the tar ``shard_path`` (atomically); returns and saves {count, rejects, keys}."""
    tmp = Path(shard_path).with_name(f".{Path(shard_path).name}.tmp-{os.getpid()}")
    rejects, keys, seen = [], [], set()
    require_text = bool(getattr(source, "require_report", True))
    with open(tmp, "wb") as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for item in items:
                try:
                    rec = source.load(item)
                    if isinstance(rec, CanonicalSample):
                        key, members = rec.key, canonical_sample_members(rec)
                    else:
                        key, members = sample_from_record(rec, canon_opts, require_text)
                    if key in seen:
                        raise RejectError("duplicate-key", f"{item}: key {key} already in this shard")
                    seen.add(key)
                    for suffix, data in members.items():
                        _add_member(tar, f"{key}.{suffix}", data)
                    keys.append(key)
                except RejectError as e:
                    rejects.append({"item": str(item), "reason": e.reason, "message": str(e)})
                except Exception as e:  # noqa: BLE001  a reader bug or a file nobody anticipated: keep going, keep the reason
                    rejects.append(
                        {"item": str(item), "reason": "error", "message": f"{item}: {type(e).__name__}: {e}"}
                    )
                _tick()
        f.flush()
        os.fsync(f.fileno())
    state = {"count": len(keys), "rejects": rejects, "keys": keys}
    atomic_write_json(state_path, state)
    os.replace(tmp, shard_path)
    return state


def canonical_options(canon_opts: dict[str, Any] | None = None) -> dict[str, Any]:
    """``canonicalize``'s keyword options with the defaults filled in, so the same settings given explicitly
    (the CLI) or left out (the Python API) mean the same run; unknown names raise ValueError."""
    defaults = {
        name: p.default
        for name, p in inspect.signature(canonicalize).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    unknown = sorted(set(canon_opts or {}) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown canonicalisation option(s) {', '.join(unknown)}; known: {', '.join(defaults)}"
        )
    return {**defaults, **(canon_opts or {})}


def _manifest(source: Source, items: list, maxcount: int, canon_opts: dict[str, Any]) -> dict[str, Any]:
    digest = hashlib.sha256("\n".join(map(str, items)).encode()).hexdigest()
    return {
        "source": source.name,
        "n_items": len(items),
        "items_sha256": digest,
        "maxcount": maxcount,
        "canon_opts": canon_opts,
    }


def write_shards(
    source: Source,
    out: str,
    maxcount: int = 1000,
    workers: int = 1,
    *,
    items: list | None = None,
    canon_opts: dict[str, Any] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Convert every item of ``source`` into shards ``out % k`` (e.g. ``DIR/NAME-%06d.tar``); resumable.

    Returns a summary: ``written``, ``rejected`` (count by reason), ``shards``, ``seconds``, ``urls`` (a brace
    pattern for open_clip's ``--train-data``), ``rejects_file``.
    """
    t0 = time.time()
    if (
        "%" in str(Path(out).parent)
        or len(SHARD_NUMBER.findall(Path(out).name)) != 1
        or "%" in SHARD_NUMBER.sub("", Path(out).name)
    ):
        raise ValueError(f"--out must contain a shard number pattern such as NAME-%06d.tar, got {out!r}")
    if maxcount < 1:
        raise ValueError(f"--maxcount must be at least 1, got {maxcount}")
    items = list(source.items() if items is None else items)
    if not items:  # a wrong --root (or an empty --range) would otherwise "succeed" with an empty shard
        where = f" under {source.root}" if getattr(source, "root", None) is not None else ""
        raise ValueError(f"{source.name}: no records to convert{where}; check --root (and --range/--limit)")
    canon_opts = canonical_options(canon_opts)
    out_dir = Path(out).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    state_dir = out_dir / STATE_DIR
    state_dir.mkdir(exist_ok=True)
    name = re.sub(r"-?%0?\d*d.*$", "", Path(out).name) or "shard"
    with exclusive_lock(state_dir / f"{name}.lock", f"shards '{name}' in {out_dir}", log):
        n_shards = max(1, -(-len(items) // maxcount))
        for k in range(n_shards):  # this set's own names only: another set here may be writing right now
            for stale in out_dir.glob(f".{glob.escape(Path(out % k).name)}.tmp-*"):
                stale.unlink()  # partial shards of an interrupted run: never visible under a final name
        # and the partial state files, rejects list and sizes.json of a killed run (writer gone)
        remove_stale_temporaries(state_dir, [f"{Path(out % k).name}.json" for k in range(n_shards)])
        remove_stale_temporaries(out_dir, [f"{name}.rejects.jsonl", "sizes.json"])

        manifest = _manifest(source, items, maxcount, canon_opts)
        manifests.claim(
            state_dir / f"{name}.manifest.json",
            manifest,
            f"{out_dir} already holds shards '{name}' written from different input or settings",
        )

        jobs = []
        for k in range(n_shards):
            shard_path = str(out_dir / Path(out % k).name)
            state_path = str(state_dir / (Path(shard_path).name + ".json"))
            if not (os.path.exists(shard_path) and os.path.exists(state_path)):
                jobs.append((k, items[k * maxcount : (k + 1) * maxcount], shard_path, state_path))
        done_before = len(items) - sum(len(j[1]) for j in jobs)
        if log and done_before:
            log(f"resuming: {n_shards - len(jobs)} of {n_shards} shards already complete")

        bar = tqdm(total=len(items), initial=done_before, unit="ecg", desc=name, disable=not progress)
        if workers <= 1 or len(jobs) <= 1:
            _init_worker(None, lambda: bar.update(1))
            try:
                for _, its, sp, st in jobs:
                    write_one_shard(source, its, sp, st, canon_opts)
            finally:
                _init_worker(None)
        else:
            counter = mp.Value("l", 0)  # records done, summed over the worker processes
            with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(counter,)) as ex:
                pending = {
                    ex.submit(write_one_shard, source, its, sp, st, canon_opts) for _, its, sp, st in jobs
                }
                while pending:
                    finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        fut.result()
                    bar.update(counter.value - (bar.n - done_before))
        bar.close()

        sizes, rejects, key_count = {}, [], Counter()
        for k in range(n_shards):
            shard_name = Path(out % k).name
            state = json.loads((state_dir / (shard_name + ".json")).read_text())
            sizes[shard_name] = state["count"]
            rejects.extend(state["rejects"])
            key_count.update(state.get("keys", []))
        sizes_path = out_dir / "sizes.json"
        with exclusive_lock(state_dir / "sizes.json.lock", str(sizes_path), log):  # shared by every set here
            all_sizes = json.loads(sizes_path.read_text()) if sizes_path.exists() else {}
            all_sizes.update(sizes)
            atomic_write_json(sizes_path, all_sizes)
        rejects_path = out_dir / f"{name}.rejects.jsonl"
        atomic_write_bytes(rejects_path, "".join(json.dumps(r) + "\n" for r in rejects).encode())

    by_reason = Counter(r["reason"] for r in rejects)
    summary = {
        "source": source.name,
        "written": sum(sizes.values()),
        "rejected": dict(sorted(by_reason.items())),
        "shards": n_shards,
        "seconds": round(time.time() - t0, 2),
        "urls": str(out_dir / (out_pattern_to_brace(Path(out).name, n_shards))),
        "rejects_file": str(rejects_path),
    }
    # Keys are unique within a shard (a repeat is rejected there); across shards only this check sees them.
    duplicates = sorted(key for key, n in key_count.items() if n > 1)
    if duplicates:
        summary["duplicate_keys"] = duplicates
    if log:
        log(format_summary(summary))
    return summary


def out_pattern_to_brace(pattern: str, n_shards: int) -> str:
    """``NAME-%06d.tar`` with 3 shards -> ``NAME-{000000..000002}.tar`` (open_clip's --train-data form)."""
    m = SHARD_NUMBER.search(pattern)
    width = int(m.group(1) or 0)
    first, last = f"{0:0{width}d}", f"{n_shards - 1:0{width}d}"
    rng = first if n_shards == 1 else f"{{{first}..{last}}}"
    return pattern[: m.start()] + rng + pattern[m.end() :]


def format_summary(s: dict[str, Any]) -> str:
    """A human-readable summary of a conversion."""
    rej = sum(s["rejected"].values())
    lines = [
        f"{s['source']}: wrote {s['written']} ECGs in {s['shards']} shard(s), rejected {rej}, {s['seconds']} s"
    ]
    lines += [f"  rejected {n:6d}  {reason}" for reason, n in s["rejected"].items()]
    if s.get("duplicate_keys"):
        dup = s["duplicate_keys"]
        lines.append(
            f"  WARNING: {len(dup)} key(s) occur in more than one shard (record ids that differ only in "
            f"characters a key cannot hold): {', '.join(dup[:5])}{' ...' if len(dup) > 5 else ''}"
        )
    lines += [f"  shards:  {s['urls']}", f"  rejects: {s['rejects_file']}"]
    return "\n".join(lines)
