"""Benchmark: FG-CLEP training throughput (samples/second) and peak memory of one training step.

One training step is exactly what open_clip_train's loop does per batch: forward of both towers, the FG-CLEP
loss (SigLIP + FNM), backward, AdamW step. Batches are real ECG-report pairs read from shards (the example
LUDB shards by default), preprocessed by the model's ECG transform and tokenised once before timing, so the
figure is the model's training speed, not the disk's. Peak memory: CUDA ``max_memory_allocated`` on GPU; on
CPU the process's resident set size (RSS) sampled every millisecond during the timed steps, with the RSS
before the first step for comparison.

    python -m fgclep_plugin.bench.train [--model FGCLEP-ResNet1d18-MiniLM] [--batch-size 32] [--steps 10]
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import open_clip
import psutil
import torch
from open_clip_train.precision import get_autocast

from ..cliargs import add_device_argument
from ..ecgdata.reader import iter_samples
from ..model.loss import create_fgclep_loss
from ..model.registry import register
from .args import bench_parser

DEFAULT_SHARDS = str(
    Path(__file__).resolve().parents[2] / "shards" / "ludb" / "ludb-train-{000000..000002}.tar"
)


class PeakRss:
    """Samples this process's RSS in a thread between ``start()`` and ``stop()``; ``peak``/``before`` in bytes."""

    def __init__(self, interval: float = 0.001):
        self.interval, self.proc = interval, psutil.Process(os.getpid())
        self.before = self.peak = 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def start(self) -> None:
        self.before = self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def load_batches(model_name: str, shards: str, batch_size: int, n_batches: int) -> list:
    """``n_batches`` (ecg, tokens) training batches from ``shards`` (cycled if the shards hold fewer)."""
    _, preprocess_train, _ = open_clip.create_model_and_transforms(model_name)
    tokenizer = open_clip.get_tokenizer(model_name)
    samples = []
    for s in iter_samples(shards):
        samples.append((preprocess_train(s["ecg"].astype("float32")), s["text"]))
        if len(samples) >= batch_size * n_batches:
            break
    if not samples:
        raise ValueError(f"no samples in {shards}")
    batches = []
    for b in range(n_batches):
        chunk = [samples[(b * batch_size + i) % len(samples)] for i in range(batch_size)]
        batches.append((torch.stack([c[0] for c in chunk]), tokenizer([c[1] for c in chunk])))
    return batches


def bench(
    model_name: str, shards: str, batch_size: int, steps: int, warmup: int, precision: str, device: str
) -> dict:
    """Time ``steps`` training steps after ``warmup``; returns samples/s, s/step and memory figures."""
    register()
    rss_start = psutil.Process(os.getpid()).memory_info().rss
    torch.manual_seed(0)
    batches = load_batches(model_name, shards, batch_size, warmup + steps)
    model = open_clip.create_model(model_name, device=device, output_dict=True)
    model.train()
    loss_fn = create_fgclep_loss(argparse.Namespace(rank=0, world_size=1))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, weight_decay=1e-4)
    autocast = get_autocast(precision, device_type=torch.device(device).type)

    def step(ecg: torch.Tensor, tokens: torch.Tensor) -> float:
        opt.zero_grad(set_to_none=True)
        with autocast():
            out = model(ecg.to(device), tokens.to(device))
            loss = sum(loss_fn(**out, output_dict=True).values())
        loss.backward()
        opt.step()
        return float(loss.detach())

    for ecg, tokens in batches[:warmup]:
        step(ecg, tokens)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    losses = []
    rss = PeakRss()
    rss.start()
    t0 = time.perf_counter()
    for ecg, tokens in batches[warmup:]:
        losses.append(step(ecg, tokens))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    rss.stop()
    result = {
        "model": model_name,
        "batch_size": batch_size,
        "steps": steps,
        "precision": precision,
        "device": device,
        "threads": torch.get_num_threads(),
        "params_million": sum(p.numel() for p in model.parameters()) / 1e6,
        "samples_per_second": steps * batch_size / seconds,
        "seconds_per_step": seconds / steps,
        "rss_start_mb": rss_start / 2**20,
        "rss_before_mb": rss.before / 2**20,
        "peak_rss_mb": rss.peak / 2**20,
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }
    if device.startswith("cuda"):
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def format_result(r: dict) -> str:
    head = (
        f"{r['model']} ({r['params_million']:.1f} M params), batch {r['batch_size']}, {r['precision']}, "
        f"{r['device']}, {r['threads']} thread(s), {r['steps']} timed steps"
    )
    lines = [
        head,
        f"  training: {r['samples_per_second']:.1f} samples/s ({r['seconds_per_step']:.3f} s/step)",
        (
            f"  memory: peak RSS {r['peak_rss_mb']:.0f} MB (before building the model "
            f"{r['rss_start_mb']:.0f} MB; after the warm-up steps {r['rss_before_mb']:.0f} MB)"
        ),
    ]
    if "peak_cuda_mb" in r:
        lines.append(f"  CUDA peak allocated: {r['peak_cuda_mb']:.0f} MB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = bench_parser("train", __doc__)
    p.add_argument("--shards", default=DEFAULT_SHARDS, help="training shards")
    p.add_argument("--batch-size", type=int, default=32, help="ECG-report pairs per step")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--precision", default="fp32", help="open_clip precision: fp32, amp, amp_bf16")
    add_device_argument(p, "cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = bench(
        args.model, args.shards, args.batch_size, args.steps, args.warmup, args.precision, args.device
    )
    print(format_result(result))
    return result


if __name__ == "__main__":
    main()
