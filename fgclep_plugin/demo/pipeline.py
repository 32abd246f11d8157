"""The whole demo: corpus, stage 1, stage 2 (validated, keep-all, oracle), stage 3 (FG-CLEP, two controls and
the perfect-validation ceiling; the runs on stage-2 shards with ``--stage3-injection``), the evaluation and the
report, chained through the stage runner (a re-run resumes; a changed injection re-runs those stage-3 runs)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ..synth.corpus import ensure_synth_corpus
from ..trainargs import stage3_over
from .config import RUN_LABELS, RUNS, STAGE2_KINDS
from .report import format_table, write_report
from .runner import Stages
from .stages import (
    checkpoint_path,
    evaluate_all,
    figures,
    stage1,
    stage2,
    stage3_input,
    stage_args,
    train_run,
)

# Settings of a training run that its manifest records (a change re-runs it).
TRAIN_KEYS = ("model", "epochs", "train_samples", "batch_size", "lr", "warmup", "fnm_lambda", "precision")
TRAIN_KEYS_EXTRA = ("processes", "seed", "extra")


def stage1_name(args: argparse.Namespace) -> str:
    """The stage-1 run's folder name in OUT (``--name``, default ``stage1``)."""
    return args.name or "stage1"


def checkpoint_paths(args: argparse.Namespace) -> dict[str, Path]:
    """Every checkpoint the whole demo writes with these (parsed, ``--fast``-applied) arguments, by column:
    ``CLEP`` (stage 1) and each stage-3 run (``FG-CLEP``, ``unvalidated``, ``original``, ``perfect validation``)."""
    paths = {"CLEP": checkpoint_path(args.out, stage1_name(args), args.epochs)}
    for kind in RUNS:
        paths[RUN_LABELS[kind]] = checkpoint_path(args.out, f"stage3-{kind}", args.stage3_epochs)
    return paths


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    """The whole demo (resumable): returns the results written to ``OUT/results.json``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    out = Path(args.out)
    st = Stages(out)
    ckpts = checkpoint_paths(args)
    print(f"[corpus] synthetic corpus in {args.synth_data} (generated on first use) ...", flush=True)
    urls = ensure_synth_corpus(args.synth_data, workers=args.gen_workers)
    s1 = stage_args(args, stage1_name(args))
    s1_set = {k: getattr(args, k) for k in (*TRAIN_KEYS, *TRAIN_KEYS_EXTRA)}
    s1_set["corpus"] = urls
    ck1 = ckpts["CLEP"]
    st.run("stage1", s1_set, [], [ck1], lambda: stage1(s1, urls), clear=[out / s1.name])

    summaries: dict[str, dict] = {}
    for kind in STAGE2_KINDS:
        folder = out / f"stage2-{kind}"
        rule = {"unvalidated": "keep-all", "perfect-validation": "oracle"}.get(kind, args.rule)
        s2_set = {
            "generator": args.generator,
            "rule": rule,
            "calib_size": args.calib_size,
            "shards": args.stage3_shards,
        }
        st.run(
            f"stage2-{kind}",
            s2_set,
            ["stage1"],
            [folder / "summary.json"],
            lambda kind=kind: summaries.__setitem__(kind, stage2(args, urls, ck1, kind)),
            clear=[folder],
        )
        summaries[kind] = json.loads((folder / "summary.json").read_text())

    for kind in RUNS:
        data = stage3_input(urls, args.stage3_shards) if kind == "original" else summaries[kind]["urls"]
        name = f"stage3-{kind}"
        # the runs on stage-2 shards: how their features enter (before the flags after --, which override it)
        injection = None if kind == "original" else args.stage3_injection
        s3 = stage_args(args, name, **stage3_over(args, ck1, injection, extra=args.extra))
        s3_set = {k: getattr(s3, k) for k in (*TRAIN_KEYS, *TRAIN_KEYS_EXTRA)}
        s3_set["data"] = data
        if injection:
            s3_set["injection"] = injection
        st.run(
            name,
            s3_set,
            ["stage1"] + ([] if kind == "original" else [f"stage2-{kind}"]),
            [ckpts[RUN_LABELS[kind]]],
            lambda s3=s3, data=data: train_run(s3, {"train": data, "val": urls["val"]}),
            clear=[out / name],
        )

    results_path = out / "results.json"
    ev_set = {"bootstrap": args.bootstrap, "probe_epochs": args.probe_epochs, "ludb": args.ludb_data}
    stage_inputs = ["stage1", *(f"stage2-{k}" for k in STAGE2_KINDS), *(f"stage3-{k}" for k in RUNS)]

    def do_eval() -> None:
        rows = evaluate_all(args, ckpts)
        print("[figures] t-SNE and similarity maps of CLEP and FG-CLEP ...", flush=True)
        figures(args, ckpts)
        curve = json.loads((out / s1.name / "curve.json").read_text())
        meta = {
            "command": "fgclep demo " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["demo"] else sys.argv[1:]),
            "model": args.model,
            "bootstrap": args.bootstrap,
            "seed": args.seed,
            "stage3_injection": args.stage3_injection,
            "stage_seconds": st.seconds,
            "load_average": os.getloadavg(),
        }
        write_report(out, rows, summaries, curve, ckpts, meta)

    st.run("eval", ev_set, stage_inputs, [results_path, out / "results.md"], do_eval, clear=[results_path])
    result = json.loads(results_path.read_text())
    print("\n" + format_table(result["table"]))
    print(f"\nstages run now: {', '.join(st.ran) or 'none (all done earlier)'}; {time.time() - t0:.0f} s")
    print(f"written: {results_path}, {out / 'results.md'}, figures in {out / 'figures'}")
    return result
