"""``fgclep bench``: every benchmark of the project with quick settings, one table, the machine described.

Each benchmark runs in its own process (its peak memory and thread settings are its own) through the command a
user would type; its measured lines (rates, ratios, memory) are collected under one table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from ..cliargs import add_command

# name, what it measures, module arguments (quick settings), full-settings hint
BENCHMARKS: tuple[tuple[str, str, list[str]], ...] = (
    (
        "shards",
        "shard streaming vs per-record WFDB reading (LUDB)",
        ["-m", "fgclep_plugin.cli", "bench-shards", "--limit", "60", "--repeats", "2"],
    ),
    ("synth", "synthetic ECG generation", ["-m", "fgclep_plugin.bench.synth", "--n", "200"]),
    (
        "tower",
        "ECG tower vs reference ResNet1d, forward/backward",
        ["-m", "fgclep_plugin.bench.tower", "--reps", "2"],
    ),
    ("train", "training throughput (open_clip step)", ["-m", "fgclep_plugin.bench.train", "--steps", "4"]),
    (
        "validate",
        "stage 2: batched vs naive validation",
        ["-m", "fgclep_plugin.bench.validate", "--ecgs", "100", "--naive-ecgs", "5"],
    ),
    (
        "evaluate",
        "evaluation: embeddings/s, zero-shot pass and embed_shards at 0 and 2 loader workers",
        ["-m", "fgclep_plugin.bench.evaluate", "--n", "1000"],
    ),
    (
        "classify",
        "fgclep classify: records/s on WFDB + .npy files",
        ["-m", "fgclep_plugin.bench.classify", "--n", "60", "--model", "FGCLEP-Tiny"],
    ),
)


def describe_machine() -> str:
    """CPU model, cores, load and library versions."""
    from .evaluate import machine  # imports torch and open_clip: start-up time of the fgclep command

    m = machine()
    libs = []
    for mod in ("numpy", "webdataset", "transformers", "accelerate"):
        try:
            libs.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"CPU: {m['cpu']} (native bf16: {'yes' if m['native_bf16'] else 'no'}); {m['cores']} cores "
        f"({m['cores_usable']} usable), torch threads {m['torch_threads']}; "
        f"load average {load}\npython {m['python']}, torch {m['torch']}, open_clip {m['open_clip']}, "
        f"{', '.join(libs)}; {m['platform']}"
    )


def run_all(only: list[str] | None = None) -> list[dict]:
    """Run the benchmarks (``only``: a subset by name); one row each: name, seconds, exit code, output lines."""
    rows = []
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    for name, what, argv in BENCHMARKS:
        if only and name not in only:
            continue
        print(f"[bench {name}] {what} ...", flush=True)
        t0 = time.time()
        proc = subprocess.run([sys.executable, *argv], check=False, env=env, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
        if proc.returncode:
            lines += ["FAILED: " + ln for ln in proc.stderr.strip().splitlines()[-3:]]
        rows.append(
            {
                "name": name,
                "what": what,
                "seconds": time.time() - t0,
                "rc": proc.returncode,
                "lines": lines,
                "command": "python " + " ".join(argv),
            }
        )
    return rows


def format_table(rows: list[dict], machine: str) -> str:
    """The measured lines of every benchmark under its name."""
    out = ["fgclep bench (quick settings)", machine, ""]
    for r in rows:
        status = "ok" if r["rc"] == 0 else f"exit {r['rc']}"
        out.append(f"== {r['name']}: {r['what']}  [{r['seconds']:.0f} s, {status}]  $ {r['command']}")
        out += [f"   {ln}" for ln in r["lines"]]
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    rows = run_all(args.only)
    print("\n" + format_table(rows, describe_machine()))
    return 1 if any(r["rc"] for r in rows) else 0


HELP = "run every benchmark (quick settings) and print one table with the machine's description"


def add_cli(sub: argparse._SubParsersAction) -> None:
    """``fgclep bench``."""
    p = add_command(sub, "bench", HELP, __doc__)
    p.add_argument("--only", nargs="+", choices=[b[0] for b in BENCHMARKS], help="run only these benchmarks")
    p.set_defaults(func=run)
