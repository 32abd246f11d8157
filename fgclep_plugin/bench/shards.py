"""Benchmark: ECGs/second from per-record WFDB reading vs streaming the same ECGs from shards.

Both paths end in the same float32 ``[12, 5000]`` array per ECG: (a) ``source.load`` (``wfdb.rdrecord``) +
:func:`fgclep_plugin.ecgdata.ecg.canonicalize`; (b) :func:`fgclep_plugin.ecgdata.reader.iter_samples` over shards written
once from those records. The two are timed alternately in one run (``--repeats`` rounds) and the best
round of each is reported, with their ratio. Peak traced memory (``tracemalloc``) of the streaming path is
measured over 1x and ``--scale``x the records, to show it does not grow with the number of records.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from ..cliargs import HelpFormatter, add_command
from ..ecgdata.ecg import canonicalize
from ..ecgdata.reader import iter_samples
from ..ecgdata.records import RejectError
from ..ecgdata.shards import write_shards
from ..ecgdata.sources import make_source

DEFAULT_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ludb"


def _direct(source, items) -> int:
    """Read and canonicalise every item; rejected records cost their read, as in a real conversion."""
    n = 0
    for item in items:
        try:
            x, _ = canonicalize(source.load(item))
        except RejectError:
            continue
        n += x.astype(np.float32).shape[0] > 0
    return n


def _stream(urls) -> int:
    n = 0
    for s in iter_samples(urls):
        n += s["ecg"].astype(np.float32).shape[0] > 0
    return n


def _peak(fn, *args) -> tuple[int, int]:
    tracemalloc.start()
    n = fn(*args)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return n, peak


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the table."""
    source = make_source(args.source, args.root)
    items = source.items()[: args.limit] if args.limit else source.items()
    with tempfile.TemporaryDirectory() as tmp:
        summary = write_shards(
            source, f"{tmp}/bench-%06d.tar", args.maxcount, 1, items=items, progress=False, log=None
        )
        urls = summary["urls"]
        n = summary["written"]
        if n == 0:
            raise ValueError(f"no record of {args.source} in {args.root} converts: {summary['rejected']}")
        direct_t, stream_t = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            assert _direct(source, items) == n
            direct_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            assert _stream(urls) == n
            stream_t.append(time.perf_counter() - t)
        n1, peak1 = _peak(_stream, urls)
        many = "::".join([urls] * args.scale)
        n2, peak2 = _peak(_stream, many)
        _, peak_direct = _peak(_direct, source, items)
    d, s = n / min(direct_t), n / min(stream_t)
    print(
        f"records: {n} converted of {len(items)} ({args.source} from {args.root}), "
        f"best of {args.repeats} alternating rounds"
    )
    print(
        f"(a) wfdb.rdrecord + canonicalize : {d:9.1f} ECG/s   peak traced memory {peak_direct / 2**20:6.1f} MiB"
    )
    print(f"(b) shards via reader            : {s:9.1f} ECG/s   peak traced memory {peak1 / 2**20:6.1f} MiB")
    print(f"speed-up (b)/(a): {s / d:.1f}x")
    print(
        f"streaming peak memory over {n1} vs {n2} ECGs: {peak1 / 2**20:.2f} MiB vs {peak2 / 2**20:.2f} MiB "
        f"(ratio {peak2 / peak1:.2f})"
    )
    return 0


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", default="ludb", help="dataset reader (fgclep sources)")
    p.add_argument("--root", default=str(DEFAULT_ROOT), help="dataset folder")
    p.add_argument("--limit", type=int, default=None, help="use only the first N records")
    p.add_argument("--maxcount", type=int, default=100, help="ECGs per shard")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions per configuration")
    p.add_argument(
        "--scale", type=int, default=5, help="stream the shards this many times for the memory check"
    )
    p.set_defaults(func=run)


def add_cli(sub: argparse._SubParsersAction) -> None:
    """``fgclep bench-shards``."""
    _add_args(
        add_command(sub, "bench-shards", "benchmark shard streaming against per-record WFDB reading", __doc__)
    )


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(
        prog="python -m fgclep_plugin.bench.shards", description=__doc__, formatter_class=HelpFormatter
    )
    _add_args(_parser)
    raise SystemExit(run(_parser.parse_args()))
