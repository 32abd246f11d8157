"""Generation speed on one core: ``python -m fgclep_plugin.bench.synth [--n 1000]``.

Prints records/second for (1) simulation alone (signal + ground truth + features), (2) a complete record
(plus report and metadata) and (3) a record encoded as a shard sample (canonicalisation, float16 npy, json),
which is what ``fgclep synth`` does per record. Target: >= 200 records/s for (2).
"""

from __future__ import annotations

import argparse
import os
import time

from ..cliargs import HelpFormatter  # imports no numpy: the core pinning below still comes first


def _rate(fn, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    """Run the three measurements and print them."""
    ap = argparse.ArgumentParser(
        prog="python -m fgclep_plugin.bench.synth",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    ap.add_argument("--n", type=int, default=1000, help="records per measurement")
    args = ap.parse_args(argv)
    try:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
        cores = "1 core (pinned)"
    except (AttributeError, OSError):
        cores = "unpinned"
    # imported after pinning to one core: numpy's BLAS sizes its thread pool from the affinity at import
    from ..ecgdata.shards import sample_from_record
    from ..synth.cases import simulate_case
    from ..synth.source import synth_record

    for i in range(20):  # warm-up
        synth_record(99, "train", i)
    sim = _rate(lambda i: simulate_case([7, i]), args.n)
    rec = _rate(lambda i: synth_record(7, "train", i), args.n)
    enc = _rate(lambda i: sample_from_record(synth_record(7, "train", i)), args.n)
    print(f"synthetic ECG generation, {args.n} records each, {cores}")
    print(f"  simulate (signal + ground truth + features): {sim:7.1f} records/s")
    print(f"  complete record (+ report, metadata):        {rec:7.1f} records/s  (target >= 200)")
    print(f"  shard sample (+ canonicalise, npy, json):    {enc:7.1f} records/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
