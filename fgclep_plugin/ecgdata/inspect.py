"""Looking into shards: ``fgclep info`` (what a shard set holds) and ``fgclep show`` (one sample, drawn)."""

from __future__ import annotations

import argparse
import json
import re
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..cliargs import add_command, add_data_argument
from .ecg import FS, LEADS
from .labels import labels_from_meta
from .plot import plot_ecg12
from .reader import iter_samples


def summarize(urls: str, label_key: str | None = None, top: int = 15) -> dict[str, Any]:
    """Counts and distributions of a shard set: sources, report length, most common reports and labels."""
    n, sources, words, reports, labels, flat, derived = 0, Counter(), [], Counter(), Counter(), 0, 0
    for s in iter_samples(urls):
        n += 1
        meta = s["meta"]
        sources[meta.get("source", "?")] += 1
        words.append(len(s["text"].split()))
        reports[s["text"]] += 1
        flat += bool(meta.get("flat_leads"))
        derived += bool(meta.get("derived_leads"))
        if label_key:
            labels.update(labels_from_meta(meta, label_key))
    if n == 0:
        raise ValueError(f"no samples in {urls}")
    w = np.asarray(words)
    return {
        "samples": n,
        "sources": dict(sources),
        "report_words": {"min": int(w.min()), "median": float(np.median(w)), "max": int(w.max())},
        "distinct_reports": len(reports),
        "most_common_reports": reports.most_common(top),
        "with_flat_leads": flat,
        "with_derived_leads": derived,
        "labels": labels.most_common(top) if label_key else None,
    }


def run_info(args: argparse.Namespace) -> int:
    """``fgclep info``."""
    s = summarize(args.data, args.label_key, args.top)
    if args.json:
        print(json.dumps(s, indent=1))
        return 0
    print(f"{s['samples']} samples; sources: " + ", ".join(f"{k} {v}" for k, v in s["sources"].items()))
    rw = s["report_words"]
    print(
        f"report words: min {rw['min']}, median {rw['median']:g}, max {rw['max']}; "
        f"{s['distinct_reports']} distinct reports"
    )
    print(
        f"records with flat leads: {s['with_flat_leads']}; with derived limb leads: {s['with_derived_leads']}"
    )
    print("most common reports:")
    for text, count in s["most_common_reports"]:
        print(f"  {count:6d}  {text[:100]}")
    if s["labels"] is not None:
        print(f"labels[{args.label_key}]:")
        for name, count in s["labels"]:
            print(f"  {count:6d}  {name}")
    return 0


def find_sample(urls: str, key: str | None = None, index: int = 0) -> dict[str, Any]:
    """The sample with ``__key__ == key`` (or the ``index``-th one) of a shard set; ValueError when absent."""
    for i, s in enumerate(iter_samples(urls)):
        if (key is not None and s["__key__"] == key) or (key is None and i == index):
            return s
    raise ValueError(f"no sample {'with key ' + repr(key) if key else f'number {index}'} in {urls}")


def safe_file_stem(key: str) -> str:
    """A file name made from a sample key: a key is a tar member path that a shard's author chose
    (``../../x/owned``, ``/abs/path``), so every character outside ``[A-Za-z0-9._-]`` becomes ``_`` and leading
    dots go; the result never leaves the folder it is written in."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", key).lstrip(".") or "sample"


def run_show(args: argparse.Namespace) -> int:
    """``fgclep show``."""
    import matplotlib  # start-up time: the fgclep command imports this module to build its parser

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen

    s = find_sample(args.data, args.key, args.index)
    print(f"{s['__key__']}: {s['text']}")
    if args.meta:
        print(json.dumps(s["meta"], indent=1, sort_keys=True))
    out = Path(args.out or f"{safe_file_stem(s['__key__'])}.png")
    title = textwrap.shorten(f"{s['__key__']}: {s['text']}", 120, placeholder=" ...")
    ax = plot_ecg12(s["ecg"].astype(np.float32), FS, LEADS, title=title)
    ax.figure.savefig(out, dpi=args.dpi, bbox_inches="tight")
    plt.close(ax.figure)
    print(f"drawn to {out}")
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    """``fgclep info`` and ``fgclep show``."""
    p = add_command(sub, "info", "what a shard set holds: sources, reports, labels", summarize.__doc__)
    add_data_argument(p, "shards, e.g. 'shards/ludb/ludb-train-{000000..000002}.tar'", positional_alias=True)
    p.add_argument("--label-key", default=None, help="count the classes in json labels[KEY] (e.g. diagnoses)")
    p.add_argument("--top", type=int, default=15, help="how many reports / labels to list")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_info)

    p = add_command(
        sub,
        "show",
        "print one sample's report and draw its 12-lead ECG (PNG)",
        "Print a shard sample's report (and metadata) and draw its ECG the clinical "
        "way: 25 mm/s, 10 mm/mV, 3x4 leads + a lead II rhythm strip.",
    )
    add_data_argument(p, "shards to search", positional_alias=True)
    p.add_argument("--key", default=None, help="the sample's __key__ (default: by --index)")
    p.add_argument("--index", type=int, default=0, help="the sample's position in the shard set")
    p.add_argument(
        "--out",
        default=None,
        help="PNG path (default: KEY.png in the working folder, KEY made file-name safe)",
    )
    p.add_argument("--dpi", type=int, default=150, help="resolution of the PNG (dots per inch)")
    p.add_argument("--meta", action="store_true", help="also print the sample's json metadata")
    p.set_defaults(func=run_show)
