"""Benchmark: ``fgclep classify`` throughput in records/s, through the command a user types.

``--n`` synthetic records are written to a temporary folder, half as WFDB (``.hea`` + 16-bit ``.dat``, 1 uV per
unit, leads in MIMIC-IV-ECG's order, aVF before aVL) and half as ``.npy`` (float32, 1000 Hz: resampled on
reading), then classified in one ``fgclep classify`` run (the task's classes, the top feature phrases, JSON out).
Printed: the command's own rate (reading, canonicalising, the transform and embedding, model load excluded),
the model-load time and the wall time of the whole command (interpreter start-up included).

    python -m fgclep_plugin.bench.classify [--n 200] [--model FGCLEP-ResNet1d18-MiniLM] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import wfdb
from scipy.signal import resample_poly

from ..cliargs import HelpFormatter
from ..defaults import DEFAULT_MODEL
from ..ecgdata.ecg import LEADS
from ..synth.source import synth_record

WFDB_ORDER = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")


def write_files(folder: Path, n: int) -> list[str]:
    """``n`` synthetic test records as files, alternately WFDB (500 Hz) and ``.npy`` (1000 Hz)."""
    files = []
    for i in range(n):
        rec = synth_record(11, "test", i)
        by_name = dict(zip(rec.lead_names, rec.signal))
        if i % 2 == 0:
            sig = np.stack([by_name[name] for name in WFDB_ORDER]).T  # [samples, leads]
            wfdb.wrsamp(
                f"r{i:05d}",
                fs=rec.fs,
                units=["mV"] * 12,
                sig_name=list(WFDB_ORDER),
                p_signal=np.ascontiguousarray(sig, dtype=np.float64),
                fmt=["16"] * 12,
                adc_gain=[1000.0] * 12,
                baseline=[0] * 12,
                write_dir=str(folder),
            )
            files.append(str(folder / f"r{i:05d}.hea"))
        else:
            x = resample_poly(np.stack([by_name[name] for name in LEADS]), 2, 1, axis=1)  # 1000 Hz
            np.save(folder / f"r{i:05d}.npy", x.astype(np.float32))
            files.append(str(folder / f"r{i:05d}.npy"))
    return files


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        prog="python -m fgclep_plugin.bench.classify",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help="open_clip model config name")
    p.add_argument("--checkpoint", default="none", help="open_clip checkpoint (speed does not depend on it)")
    p.add_argument("--n", type=int, default=200, help="files to classify")
    p.add_argument("--batch-size", type=int, default=32, help="files per encoder batch")
    p.add_argument("--task", default="synth-diagnosis", help="the classes scored")
    p.add_argument("--device", default="cpu", help="torch device")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fgclep-bench-classify-") as tmp:
        folder = Path(tmp)
        files = write_files(folder, args.n)
        out = folder / "out.json"
        cmd = [sys.executable, "-m", "fgclep_plugin.cli", "classify", *files, "--model", args.model]
        cmd += ["--checkpoint", args.checkpoint, "--task", args.task, "--features", "--fs", "1000"]
        cmd += ["--leads", ",".join(LEADS), "--batch-size", str(args.batch_size), "--device", args.device]
        cmd += ["--json", "--out", str(out)]
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        proc = subprocess.run(
            cmd, check=False, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
        )
        wall = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(f"fgclep classify failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
        doc = json.loads(out.read_text())
    ok, rejected = len(doc["results"]), len(doc["rejects"])
    print(
        f"{args.model} ({args.checkpoint}), {args.n} files ({(args.n + 1) // 2} WFDB 500 Hz, {args.n // 2} .npy "
        f"1000 Hz), batch {args.batch_size}, {len(doc['classes'])} classes + features, device {doc['device']}; "
        f"load average (1 min) {load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"
    )
    print(
        f"  classify (read, canonicalise, embed, score): {doc['records_per_s']:8.1f} records/s  ({ok} ok, {rejected} rejected)"
    )
    print(f"  model load + class/feature prompts:          {doc['seconds_model']:8.1f} s")
    print(f"  whole command (start-up included):           {wall:8.1f} s  ({args.n / wall:.1f} records/s)")
    return doc


if __name__ == "__main__":
    main()
