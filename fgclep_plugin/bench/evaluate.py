"""Benchmark: evaluation speed on CPU. ECG embeddings per second, and the time of a full zero-shot pass over a
10,000-ECG shard set next to the pure ECG-encoder forward on the same tensors, measured side by side in one run.

The shard set is built in a temporary folder by replicating a source set (default: 500 synthetic test records
generated there) until it holds ``--n`` ECGs, with a ``sizes.json``. Timings on the same model and batches:

- **encoder forward**: ``model.visual(x)`` under ``torch.no_grad`` over the already transformed ECGs, in the
  same batches the zero-shot loader forms (the floor: no reading, decoding, transform or normalisation), run
  before and after all passes (averaged, both printed) and right before each pass;
- **embedding** (:func:`fgclep_plugin.model.scoring.embed_ecgs`, the one embedding path) over the same tensors:
  ECG embeddings per second;
- **zero-shot pass through training's loader** (:func:`fgclep_plugin.model.zeroshot.zero_shot_auc` over
  :func:`fgclep_plugin.training.zeroshot.get_zero_shot_data`): reading, decoding, the model's transform (per
  sample, on every torch thread where the loader has no worker: the evaluation's path before the DataLoader
  change), embedding, the class prompts and the macro AUC, end to end;
- **shard embedding** (:func:`fgclep_plugin.model.scoring.embed_shards`, what ``fgclep eval`` / ``retrieve`` /
  ``figures`` run): reading, decoding and the transform in DataLoader workers, embedding, shard order restored.

Both passes run once per ``--workers`` value (default 0 and 2). Each reports its overhead beyond the encoder
forward run just before it, ``(pass - forward) / forward`` (the machine may be shared: the load drifts).

    python -m fgclep_plugin.bench.evaluate [--model FGCLEP-ResNet1d18-MiniLM] [--n 10000] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import open_clip
import torch

from ..cliargs import HelpFormatter
from ..defaults import DEFAULT_MODEL
from ..ecgdata.reader import expand_urls, iter_raw, iter_samples, read_sizes
from ..ecgdata.shards import atomic_write_json
from ..model.scoring import embed_ecgs, embed_shards, load_model
from ..model.transform import ecg_to_tensor
from ..model.zeroshot import zero_shot_auc
from ..synth.corpus import ensure_synth_corpus
from ..training.precision import native_bf16
from ..training.zeroshot import get_zero_shot_data


def machine() -> dict[str, Any]:
    """CPU model, cores, torch threads and versions, load average (the machine may be shared)."""
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "native_bf16": native_bf16("cpu"),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def replicate_shards(source: str, out_dir: Path, n: int) -> tuple[str, int]:
    """Copy the shards of ``source`` into ``out_dir`` as ``bench-%06d.tar`` until they hold at least ``n``
    samples (whole copies), with a ``sizes.json``; returns the brace pattern and the number of samples."""
    shards = expand_urls(source)
    counts = []
    for s in shards:
        size = read_sizes(s)
        counts.append(size if size is not None else sum(1 for _ in iter_raw(s)))
    if not sum(counts):
        raise ValueError(f"no samples in {source}")
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes, total, i = {}, 0, 0
    while total < n:
        for shard, count in zip(shards, counts):
            name = f"bench-{i:06d}.tar"
            shutil.copyfile(shard, out_dir / name)
            sizes[name] = count
            total, i = total + count, i + 1
            if total >= n:
                break
    (out_dir / "sizes.json").write_text(json.dumps(sizes, indent=1))
    return str(out_dir / f"bench-{{000000..{i - 1:06d}}}.tar"), total


def bench(
    model_name: str,
    checkpoint: str | None,
    n: int,
    batch_size: int,
    source: str | None,
    label_key: str,
    workers: list[int],
    work_dir: Path,
) -> dict[str, Any]:
    """Build the shard set in ``work_dir`` and time the three passes (see the module docstring)."""
    if source is None:
        source = ensure_synth_corpus(work_dir / "synth", sizes={"test": 500})["test"]
    urls, total = replicate_shards(source, work_dir / "shards", n)
    torch.manual_seed(0)
    lm = load_model(model_name, checkpoint)
    model = lm.model
    # The set is whole copies of the source, so its ECGs are the source's, in order, again and again.
    unique = [ecg_to_tensor(s["ecg"], lm.preprocess) for s in iter_samples(source)]

    def batches():  # the loader's batches of the replicated set, stacked on the fly (no 10,000-ECG copy)
        for i in range(0, total, batch_size):
            yield torch.stack([unique[j % len(unique)] for j in range(i, min(i + batch_size, total))])

    @torch.no_grad()
    def forward() -> float:
        t0 = time.perf_counter()
        for x in batches():
            model.visual(x)
        return time.perf_counter() - t0

    with torch.no_grad():
        model.visual(next(batches()))  # warm-up (allocator, kernels)
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    forward_before = forward()

    t0 = time.perf_counter()
    emb = embed_ecgs(model, batches(), progress="embed", total=total)
    embed_s = time.perf_counter() - t0
    if emb.shape[0] != total:
        raise RuntimeError(f"embedded {emb.shape[0]} ECGs, expected {total}")

    zs: dict[str, Any] = {}

    def zero_shot_pass(w: int) -> int:
        data = get_zero_shot_data(urls, lm.preprocess, label_key, batch_size=batch_size, workers=w)
        zs.update(zero_shot_auc(model, lm.tokenizer, data.dataloader, prompt_text=data.prompt_text))
        return zs["n_samples"]

    def shards_pass(w: int) -> int:
        lm.workers = w
        return len(embed_shards(lm, urls, batch_size).keys)

    # each pass right after its own encoder forward: on a shared machine the load drifts between passes
    passes = []
    for w in workers:
        for path, run in (
            ("training loader zero-shot", zero_shot_pass),
            ("scoring.embed_shards", shards_pass),
        ):
            fwd = forward()
            t0 = time.perf_counter()
            n_read = run(w)
            s = time.perf_counter() - t0
            if n_read != total:
                raise RuntimeError(f"{path} pass read {n_read} ECGs, the set holds {total}")
            passes.append(
                {
                    "path": path,
                    "workers": w,
                    "s": s,
                    "forward_s": fwd,
                    "ecg_per_s": total / s,
                    "overhead": (s - fwd) / fwd,
                }
            )
    forward_after = forward()
    forward_s = (forward_before + forward_after) / 2
    return {
        "model": model_name,
        "checkpoint": checkpoint,
        "ecgs": total,
        "shards": urls.rsplit("/", 1)[-1],
        "batch_size": batch_size,
        "forward_s": forward_s,
        "forward_runs_s": [forward_before, forward_after],
        "embed_s": embed_s,
        "passes": passes,
        "forward_ecg_per_s": total / forward_s,
        "embed_ecg_per_s": total / embed_s,
        "embed_over_forward": embed_s / forward_s,
        "zero_shot_auc": zs["auc"],
        "classes": len(zs["per_class"]),
        "machine": machine(),
        "load_average_1min": [load_start, os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")],
    }


def format_result(r: dict[str, Any]) -> str:
    """The benchmark's printed report."""
    m = r["machine"]
    passes = [
        f"  {p['path'] + ' pass, workers ' + str(p['workers']) + ':':48s}{p['s']:7.1f} s  "
        f"{p['ecg_per_s']:7.1f} ECG/s  (forward just before: {p['forward_s']:.1f} s; overhead beyond it "
        f"{p['overhead']:.2f} x forward)"
        for p in r["passes"]
    ]
    return "\n".join(
        [
            (
                f"{m['cpu']}; {m['cores']} cores ({m['cores_usable']} usable), torch {m['torch']} with "
                f"{m['torch_threads']} threads, open_clip {m['open_clip']}, Python {m['python']}; "
                "load average (1 min) {:.2f} at the start, {:.2f} at the end".format(*r["load_average_1min"])
            ),
            (
                f"{r['model']} ({r['checkpoint'] or 'untrained weights'}), {r['ecgs']} ECGs ({r['shards']}), "
                f"batch {r['batch_size']}, fp32"
            ),
            (
                f"  encoder forward (model.visual, tensors ready): {r['forward_s']:7.1f} s  "
                f"{r['forward_ecg_per_s']:7.1f} ECG/s  (mean of a run before and after the passes: "
                "{:.1f} s, {:.1f} s)".format(*r["forward_runs_s"])
            ),
            (
                f"  embedding (scoring.embed_ecgs, same tensors):   {r['embed_s']:7.1f} s  "
                f"{r['embed_ecg_per_s']:7.1f} ECG embeddings/s  ({r['embed_over_forward']:.3f} x forward)"
            ),
            *passes,
            f"  (zero-shot macro AUC {r['zero_shot_auc']:.3f} over {r['classes']} classes)",
        ]
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        prog="python -m fgclep_plugin.bench.evaluate",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help="open_clip model config name")
    p.add_argument("--checkpoint", default=None, help="open_clip checkpoint (speed does not depend on it)")
    p.add_argument("--n", type=int, default=10000, help="ECGs in the replicated shard set")
    p.add_argument("--batch-size", type=int, default=64, help="ECGs per encoder batch")
    p.add_argument("--source", default=None, help="shards to replicate (default: 500 synthetic test records)")
    p.add_argument("--label-key", default="diagnoses", help="zero-shot labels in the source's json")
    p.add_argument(
        "--workers", type=int, nargs="+", default=[0, 2], help="loader worker processes, one pass per value"
    )
    p.add_argument("--keep", default=None, help="build the shard set in this folder and keep it")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="fgclep-bench-eval-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        result = bench(
            args.model,
            args.checkpoint,
            args.n,
            args.batch_size,
            args.source,
            args.label_key,
            args.workers,
            work,
        )
    print(format_result(result))
    if args.json:
        atomic_write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
