"""Demo: train the small offline FG-CLEP model on the synthetic corpus and watch it learn.

    python -m fgclep_plugin.demo            (or: fgclep demo)

Generates the synthetic corpus if missing, then runs the real training entry point under ``accelerate launch``
(one CPU process, or as many as asked) for a few epochs with the ECG zero-shot AUC on the held-out split after
every epoch, and prints the curve: epoch, mean training loss (SigLIP + FNM terms), zero-shot macro AUC. The
epoch-0 row is the untrained model (same seed as the run), measured in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from .cli import HelpFormatter
from .train import accelerate_cpu_command

DEFAULT_MODEL = "FGCLEP-ResNet1d18-MiniLM"


def untrained_auc(model_name: str, zeroshot_urls: str, label_key: str, seed: int) -> float:
    """Zero-shot AUC of the model as training starts (open_clip_train seeds with ``--seed`` before building)."""
    import open_clip
    from open_clip_train.main import random_seed

    from .training.hooks import register
    from .training.zeroshot import get_zero_shot_data, zero_shot_auc

    register()
    random_seed(seed, 0)
    model, _, preprocess = open_clip.create_model_and_transforms(model_name)
    zs = get_zero_shot_data(zeroshot_urls, preprocess, label_key, batch_size=64)
    return zero_shot_auc(model, open_clip.get_tokenizer(model_name), zs.dataloader)["auc"]


def launch_command(args: argparse.Namespace, urls: dict[str, str]) -> list[str]:
    """``accelerate launch ... -m fgclep_plugin.train ...`` for the demo run."""
    return [
        *accelerate_cpu_command(args.processes),
        "--model",
        args.model,
        "--train-data",
        urls["train"],
        "--train-num-samples",
        str(args.train_samples),
        "--batch-size",
        str(args.batch_size),
        "--epochs",
        str(args.epochs),
        "--lr",
        str(args.lr),
        "--wd",
        "1e-4",
        "--warmup",
        str(args.warmup),
        "--workers",
        str(args.workers),
        "--device",
        "cpu",
        "--precision",
        args.precision,
        "--seed",
        str(args.seed),
        "--logs",
        str(args.logs),
        "--name",
        args.name,
        "--save-frequency",
        "0",
        "--report-to",
        "tensorboard",
        "--log-every-n-steps",
        "10",
        "--ecg-zeroshot-data",
        urls["val"],
        "--ecg-zeroshot-label-key",
        "diagnoses",
        "--zeroshot-frequency",
        "1",
        "--loss-log",
        str(Path(args.logs) / args.name / "losses"),
        *args.extra,
    ]


def read_curve(run_dir: Path) -> list[dict]:
    """(epoch, mean loss, AUC) rows from the run's loss log and open_clip's results.jsonl.

    Loss rows are grouped by the epoch they were logged in; of repeated steps (an epoch re-run after a resume)
    the last row counts, so each epoch's mean is that of the run that completed it.
    """
    by_step = {}
    for line in (run_dir / "losses-rank0.jsonl").read_text().splitlines():
        row = json.loads(line)
        by_step[row["step"]] = row
    results = [
        json.loads(line) for line in (run_dir / "checkpoints" / "results.jsonl").read_text().splitlines()
    ]
    rows = []
    for i, r in enumerate(results):  # one line per epoch (--zeroshot-frequency 1)
        epoch = int(r.get("epoch", i + 1))  # completed epochs, 1-based; the loss log's epoch is 0-based
        chunk = [x for x in by_step.values() if x["epoch"] == epoch - 1]
        siglip, fnm = (
            sum(x[k] for x in chunk) / max(len(chunk), 1) for k in ("contrastive_loss", "fnm_loss")
        )
        rows.append(
            {"epoch": epoch, "loss": siglip + fnm, "siglip": siglip, "fnm": fnm, "auc": r["ecg-zeroshot-auc"]}
        )
    return rows


def format_curve(rows: list[dict]) -> str:
    lines = ["epoch   train loss (SigLIP + FNM)        zero-shot AUC"]
    for r in rows:
        loss = (
            "        -"
            if r.get("loss") is None
            else (f"{r['loss']:9.4f} ({r['siglip']:.4f} + {r['fnm']:.4f})")
        )
        lines.append(f"{r['epoch']:5d}   {loss:<30s}   {r['auc']:.4f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> list[dict]:
    """Generate the corpus if needed, train under accelerate, return and print the curve."""
    from .synth.corpus import ensure_synth_corpus

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"synthetic corpus in {args.root} (generated on first use) ...", flush=True)
    urls = ensure_synth_corpus(args.root, workers=args.gen_workers)
    run_dir = Path(args.logs) / args.name
    if run_dir.exists():
        raise SystemExit(f"{run_dir} exists: pass another --name or remove it")
    auc0 = untrained_auc(args.model, urls["val"], "diagnoses", args.seed)
    print(f"untrained zero-shot AUC on the held-out split: {auc0:.4f}", flush=True)
    cmd = launch_command(args, urls)
    print("running:", " ".join(cmd[1:]), flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.processes)))
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            if "Train Epoch" in line or "ECG zero-shot" in line or "Error" in line or "Traceback" in line:
                print(line.rstrip()[:240], flush=True)
    if proc.returncode:
        raise SystemExit(f"training failed (exit code {proc.returncode}); see {run_dir / 'out.log'}")
    rows = [{"epoch": 0, "loss": None, "auc": auc0}, *read_curve(run_dir)]
    print("\n" + format_curve(rows))
    (run_dir / "curve.json").write_text(json.dumps(rows, indent=1))
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default="data/synth", help="synthetic corpus folder")
    p.add_argument("--model", default=DEFAULT_MODEL, help="open_clip model config")
    p.add_argument("--epochs", type=int, default=8, help="training epochs")
    p.add_argument("--train-samples", type=int, default=1600, help="training samples per epoch")
    p.add_argument("--batch-size", type=int, default=32, help="batch size per process")
    p.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate")
    p.add_argument("--warmup", type=int, default=10, help="warm-up steps")
    p.add_argument("--workers", type=int, default=1, help="dataloader workers")
    p.add_argument(
        "--precision", default="amp_bf16", help="open_clip precision (amp_bf16 is ~2x fp32 on CPU)"
    )
    p.add_argument("--processes", type=int, default=1, help="accelerate processes (CPU)")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--logs", default="runs", help="open_clip --logs folder (checkpoints, curve.json)")
    p.add_argument("--name", default=None, help="run name (default: demo-<model>-<epochs>ep-<seed>)")
    p.add_argument("--gen-workers", type=int, default=1, help="processes generating the synthetic corpus")
    p.add_argument("extra", nargs="*", help="more flags for fgclep_plugin.train (after --)", default=[])


def _main_from_args(args: argparse.Namespace) -> int:
    args.name = args.name or f"demo-{args.model}-{args.epochs}ep-seed{args.seed}"
    run(args)
    return 0


def add_cli(subparsers) -> None:
    """``fgclep demo``."""
    p = subparsers.add_parser(
        "demo",
        help="train the small model on synthetic ECGs and print the learning curve",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=_main_from_args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m fgclep_plugin.demo",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    add_arguments(p)
    return _main_from_args(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
