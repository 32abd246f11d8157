"""Benchmark: ECG tower and small-config training throughput and peak memory on CPU.

    python -m fgclep_plugin.bench.tower [--batch-size 16] [--reps 5] [--bf16]

Prints, for forward + backward of the ECG tower (one optimiser-free step on a random batch):
  * ResNet1d50 (the paper config: MERL layout, no stem max-pool, attention-pooling head) against a plain
    reference ResNet1d50 (``benchmarks/reference_resnet1d.py``, built with the same layout, parameter count
    asserted equal), measured side by side with interleaved repetitions;
  * the small offline config's tower at its training input length;
  * a full training step (both towers, FG-CLEP loss, AdamW) of the small offline config;
with samples/s (best and median repetition) and peak resident memory of a fresh process running that step.
Run it from a source checkout (the reference implementation lives in the repository, not in the package).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import os
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from queue import Empty
from typing import Any

import torch

PAPER_MODEL = "FGCLEP-ResNet1d50-BioClinicalBERT"
SMALL_MODEL = "FGCLEP-ResNet1d18-MiniLM"
_REPO = Path(__file__).resolve().parents[2]


# The workloads' imports stand inside the functions building them: each workload runs in a fresh (spawned)
# process whose peak memory is measured, so it loads only what it uses (no open_clip for the bare towers).


def _vision_cfg(model_name: str) -> dict[str, Any]:
    from ..model.registry import config_dir  # the workload's own process (see above)

    return json.loads((config_dir() / f"{model_name}.json").read_text())


def _reference_class() -> type[torch.nn.Module]:
    path = _REPO / "benchmarks" / "reference_resnet1d.py"
    if not path.is_file():
        raise SystemExit(f"reference implementation not found at {path.name}; run from a source checkout")
    spec = importlib.util.spec_from_file_location("reference_resnet1d", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RefResNet1d50


def _build(kind: str) -> tuple[Callable[[], None], int]:
    """A closure running one step of the named workload, and the workload's parameter count."""
    from ..model.tower import EcgTowerCfg, build_ecg_tower  # the workload's own process (see above)

    batch, bf16 = _ARGS["batch_size"], _ARGS["bf16"]
    torch.manual_seed(0)
    if kind == "small_train":
        return _small_train_step(batch, bf16)
    if kind == "reference50":
        cfg = _vision_cfg(PAPER_MODEL)
        vcfg = EcgTowerCfg.from_vision_cfg(cfg["vision_cfg"])
        attention = (vcfg.attn_dim, vcfg.attn_heads) if vcfg.pool == "attention" else None
        length = vcfg.input_length
        model = _reference_class()(
            cfg["embed_dim"], vcfg.leads, vcfg.width, vcfg.stem_pool, attention, input_length=length
        )
    else:
        name = PAPER_MODEL if kind == "ours50" else SMALL_MODEL
        cfg = _vision_cfg(name)
        vcfg = cfg["vision_cfg"]
        model = build_ecg_tower(cfg["embed_dim"], vcfg)
        length = vcfg.get("train_crop_length") or vcfg["input_length"]
    model.train()
    x = torch.randn(batch, 12, length)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = model(x)
        y.float().square().mean().backward()

    return step, sum(p.numel() for p in model.parameters())


def _small_train_step(batch: int, bf16: bool) -> tuple[Callable[[], None], int]:
    import open_clip  # the workload's own process (see above)

    from ..model.loss import FgClepLoss
    from ..model.registry import register

    register()
    model, _, _ = open_clip.create_model_and_transforms(SMALL_MODEL, output_dict=True)
    tokenizer = open_clip.get_tokenizer(SMALL_MODEL)
    vcfg = model.visual.cfg
    ecg = torch.randn(batch, 12, vcfg.train_crop_length or vcfg.input_length)
    words = [
        "sinus rhythm",
        "normal ecg",
        "atrial fibrillation",
        "left axis deviation",
        "st elevation",
        "first degree av block",
        "right bundle branch block",
        "sinus tachycardia",
        "t wave inversion",
    ]
    reports = [". ".join(words[(i + k) % len(words)] for k in range(1 + i % 4)) for i in range(batch)]
    text = tokenizer(reports)
    loss_fn = FgClepLoss(fnm_lambda=0.5)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(ecg, text)
        loss = loss_fn(
            out["image_features"].float(), out["text_features"].float(), out["logit_scale"], out["logit_bias"]
        )
        loss.backward()
        opt.step()

    return step, sum(p.numel() for p in model.parameters())


_ARGS: dict[str, Any] = {}


def _time(steps: dict[str, Callable[[], None]], reps: int) -> dict[str, list[float]]:
    """Seconds per step for each workload; repetitions interleaved so load changes hit all alike."""
    times: dict[str, list[float]] = {k: [] for k in steps}
    for step in steps.values():  # warm-up (allocator, oneDNN primitive caches)
        step()
    for _ in range(reps):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    return times


def _vm_hwm_mib() -> float:
    """Peak resident set size of this process (VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_hwm() -> None:
    """Reset the peak-RSS mark (Linux: a child starts with its parent's mark, inherited across fork)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_child(kind: str, args: dict[str, Any], queue: mp.Queue) -> None:
    _ARGS.update(args)
    torch.set_num_threads(args["threads"])
    _reset_hwm()
    step = _build(kind)[0]
    before = _vm_hwm_mib()
    step()
    step()
    after = _vm_hwm_mib()
    queue.put((after, after - before))


def _peak_rss(kind: str) -> tuple[float, float]:
    """(peak RSS MiB of a fresh process running two steps, growth of the peak during those steps)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_rss_child, args=(kind, dict(_ARGS), queue))
    proc.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except Empty:
            if not proc.is_alive():
                raise SystemExit(f"memory probe for {kind} failed (exit code {proc.exitcode})") from None
    proc.join()
    return result


def _report(label: str, seconds: list[float], batch: int, rss: tuple[float, float]) -> str:
    best, median = batch / min(seconds), batch / statistics.median(seconds)
    return f"{label:<44} {best:8.1f} {median:8.1f}   {rss[0]:8.0f} {rss[1]:8.0f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--reps", type=int, default=5, help="interleaved timed repetitions per workload")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--bf16", action="store_true", help="autocast to bfloat16 (open_clip --precision amp_bf16)"
    )
    args = parser.parse_args(argv)
    _ARGS.update(batch_size=args.batch_size, bf16=args.bf16, threads=args.threads)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    batch = args.batch_size
    ours, n_ours = _build("ours50")
    ref, n_ref = _build("reference50")
    if n_ours != n_ref:
        raise SystemExit(f"parameter counts differ: ours {n_ours}, reference {n_ref}")
    small, n_small = _build("small_tower")
    train, n_train = _build("small_train")

    print(
        f"torch {torch.__version__}, {args.threads} threads, batch {batch}, "
        f"{'bf16 autocast' if args.bf16 else 'fp32'}, {args.reps} interleaved repetitions"
    )
    times = _time({"ours50": ours, "reference50": ref, "small_tower": small, "small_train": train}, args.reps)
    print(
        f"{'workload (forward + backward)':<44} {'best/s':>8} {'median/s':>8}   {'peakMiB':>8} {'stepMiB':>8}"
    )
    labels = {
        "ours50": f"ResNet1d50 MERL layout (ours, {n_ours / 1e6:.1f} M params)",
        "reference50": "ResNet1d50 MERL layout, plain reference",
        "small_tower": f"{SMALL_MODEL} ECG tower ({n_small / 1e6:.2f} M)",
        "small_train": f"{SMALL_MODEL} train step ({n_train / 1e6:.1f} M)",
    }
    for kind, label in labels.items():
        print(_report(label, times[kind], batch, _peak_rss(kind)))
    paired = [r / o for o, r in zip(times["ours50"], times["reference50"])]
    print(
        f"ResNet1d50 speed ours / reference: best {min(times['reference50']) / min(times['ours50']):.3f}, "
        f"median of paired repetitions {statistics.median(paired):.3f} (>1 means ours is faster)"
    )


if __name__ == "__main__":
    main()
