"""``fgclep features generate``: candidate waveform features for every unique report of a shard set, cached.

Reads only the reports (``txt``) of the shards, asks the backend once per unique normalised report that the
cache does not hold yet, and appends each answer to this process's cache part. With ``--num-shards N
--shard-index I`` (or ``RANK`` / ``WORLD_SIZE`` from ``torchrun`` / ``accelerate launch``) process I takes the
reports whose key falls in part I (a stable partition by report key), so N processes (one vLLM engine per GPU)
cover every report exactly once. Needs no open_clip: it runs in vLLM's own environment.

Also runnable as ``python -m fgclep_plugin.augment.generate`` (same options).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from ..ecgdata.outdir import check_writable_folder
from ..model.device import process_index as launcher_process_index
from .backends import BACKENDS, Backend, make_backend
from .cache import CandidateCache
from .text import MAX_FEATURE_CHARS, MAX_FEATURES, PROMPT_VERSION, normalise_report, parse_answer, report_key

MAX_WARNINGS = 20  # answers named one by one; the rest are counted in the summary


def prompt_version(max_features: int = MAX_FEATURES, max_chars: int = MAX_FEATURE_CHARS) -> str:
    """The cache's prompt identity: :data:`PROMPT_VERSION`, plus the answer limits when they differ."""
    if (max_features, max_chars) == (MAX_FEATURES, MAX_FEATURE_CHARS):
        return PROMPT_VERSION
    return f"{PROMPT_VERSION}-max{max_features}x{max_chars}"


def read_reports(urls: str | Sequence[str]) -> tuple[int, dict[str, str]]:
    """(number of samples, report key -> normalised report) over the shards' ``txt`` members.

    ECG arrays are not decoded. A sample without a report is skipped with a warning naming it; a shard that
    cannot be read to its end keeps the reports read before the fault and is named in a warning; a missing
    shard is an error.
    """
    from ..ecgdata.reader import expand_urls, iter_raw

    n, reports = 0, {}
    for url in expand_urls(urls):
        try:
            for raw in iter_raw(url):
                n += 1
                txt = raw.get("txt")
                if txt is None:
                    warnings.warn(
                        f"sample {raw['__key__']} in {url} has no report (txt): skipped", stacklevel=2
                    )
                    continue
                text = normalise_report(txt.decode("utf-8", "replace") if isinstance(txt, bytes) else txt)
                if text:
                    reports.setdefault(report_key(text), text)
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as e:
            warnings.warn(
                f"{url}: read stopped early ({e}); the reports read before it are used", stacklevel=2
            )
    return n, reports


def part_of(key: str, num_parts: int) -> int:
    """The part (process) a report key belongs to: stable across runs, machines and shard orders."""
    return int(key[:15], 16) % num_parts


def process_index(num_shards: int | None = None, shard_index: int | None = None) -> tuple[int, int]:
    """(index, count) of this process: explicit ``--num-shards`` / ``--shard-index``, else the launcher's
    (:func:`fgclep_plugin.model.device.process_index`: ``RANK`` / ``WORLD_SIZE``, else (0, 1))."""
    if num_shards is None and shard_index is None:
        return launcher_process_index()
    n = 1 if num_shards is None else num_shards
    i = 0 if shard_index is None else shard_index
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard-index must be in [0, --num-shards), got {i} of {n}")
    return i, n


def generate(
    reports: dict[str, str],
    backend: Backend,
    cache_dir: str | os.PathLike,
    prompt: str = PROMPT_VERSION,
    index: int = 0,
    num_parts: int = 1,
    batch_size: int = 256,
    progress: bool = True,
) -> dict[str, Any]:
    """Fill the cache for this process's part of ``reports`` (key -> normalised report); return the summary."""
    mine = sorted(k for k in reports if part_of(k, num_parts) == index)
    t0 = time.time()
    statuses: Counter[str] = Counter()
    named = 0
    with CandidateCache(cache_dir, backend.name, backend.model, prompt, index, num_parts) as cache:
        todo = [k for k in mine if k not in cache]
        bar = _progress(len(todo), progress, f"features [{backend.name}]")
        for start in range(0, len(todo), batch_size):
            keys = todo[start : start + batch_size]
            texts = backend.complete([reports[k] for k in keys])
            for key, text in zip(keys, texts):
                if text is None:  # the reason (where the backend knows it) is kept in the entry's raw
                    features, status = [], "error"
                    text = backend.errors.get(reports[key], "")
                else:
                    features, status = parse_answer(text, backend.max_features)
                statuses[status] += 1
                if status != "ok" and named < MAX_WARNINGS:
                    named += 1
                    what = (
                        f"the request failed twice ({text or 'no reason given'})"
                        if status == "error"
                        else f"answer {status}: {text!r:.120}"
                    )
                    warnings.warn(
                        f"report {key[:12]} ({reports[key]!r:.80}): {what}; 0 candidates", stacklevel=2
                    )
                cache.add(key, reports[key], features, status, text or "")
            bar.update(len(keys))
        bar.close()
        answered = [cache.get(k) for k in mine]
    counts = [len(f) for f in answered if f is not None]
    return {
        "backend": backend.name,
        "model": backend.model,
        "prompt_version": prompt,
        "part": f"{index} of {num_parts}",
        "unique_reports": len(reports),
        "reports_in_part": len(mine),
        "cached": len(mine) - len(todo),
        "calls_made": len(todo),
        "retries": backend.failures,
        "failures": backend.failed,
        "unanswered": sum(f is None for f in answered),  # no answer yet: a failed request, retried next run
        "status": dict(statuses),
        "not_named_in_warnings": max(0, sum(v for s, v in statuses.items() if s != "ok") - named),
        "candidates_per_report": round(sum(counts) / len(counts), 3) if counts else 0.0,
        "reports_without_candidates": sum(c == 0 for c in counts),
        "seconds": round(time.time() - t0, 2),
        "cache": str(cache.path),
    }


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool, desc: str):
    if not enabled or total == 0:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="report")


def _engine_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {"max_features": args.max_features, "max_chars": args.max_feature_chars}
    if args.backend in ("vllm", "openai", "transformers"):
        options["max_tokens"] = args.max_tokens
    if args.backend == "vllm":
        options["seed"] = args.seed
        options["engine"] = {
            "tensor_parallel_size": args.tensor_parallel_size,
            "max_model_len": args.max_model_len,
            "gpu_memory_utilization": args.gpu_memory_utilization,
            "kv_cache_memory_bytes": args.kv_cache_memory_bytes,
            "dtype": args.dtype,
            "enforce_eager": args.enforce_eager or None,
            "max_num_seqs": args.max_num_seqs,
        }
    elif args.backend == "openai":
        if not args.base_url:
            raise ValueError(
                "--backend openai needs --base-url (e.g. http://127.0.0.1:8000/v1 of `vllm serve`)"
            )
        options.update(
            base_url=args.base_url, concurrency=args.concurrency, structured=args.structured_output
        )
    elif args.backend == "transformers":
        options.update(batch_size=args.lm_batch_size, dtype=args.dtype)
    return options


def run_generate(args: argparse.Namespace) -> int:
    """``fgclep features generate``."""
    index, n = process_index(args.num_shards, args.shard_index)
    check_writable_folder(args.cache, "cache folder")
    if args.summary_json:
        check_writable_folder(os.path.dirname(os.path.abspath(args.summary_json)))
    samples, reports = read_reports(args.data)
    if samples == 0:
        raise ValueError(f"no samples in {args.data}")
    backend = make_backend(args.backend, args.model, **_engine_options(args))
    try:
        summary = generate(
            reports,
            backend,
            args.cache,
            prompt_version(args.max_features, args.max_feature_chars),
            index,
            n,
            batch_size=args.batch_size,
            progress=not args.quiet,
        )
    finally:
        backend.close()
    summary = {"samples": samples, **summary}
    print(
        f"{summary['samples']} reports, {summary['unique_reports']} unique; part {summary['part']}: "
        f"{summary['reports_in_part']} reports, {summary['calls_made']} LLM calls made, {summary['cached']} cached, "
        f"{summary['failures']} failed ({summary['retries']} retried), "
        f"{summary['candidates_per_report']} candidates per report",
        file=sys.stderr,
    )
    print(json.dumps(summary, indent=1))
    if args.summary_json:
        from ..ecgdata.shards import atomic_write_json

        atomic_write_json(args.summary_json, summary)
    if summary["reports_in_part"] and summary["unanswered"] == summary["reports_in_part"]:
        print(
            f"features generate: error: no report has an answer ({summary['failures']} requests failed twice; "
            f"reasons in {summary['cache']})",
            file=sys.stderr,
        )
        return 1
    return 0


def add_cli(sub: argparse._SubParsersAction, formatter: type | None = None) -> None:
    """Add ``fgclep features generate``."""
    if formatter is None:
        from ..cliargs import HelpFormatter as formatter
    features = sub.add_parser("features", help="stage 2: candidate waveform features per report (LLM or kb)")
    fsub = features.add_subparsers(dest="features_command", required=True, metavar="ACTION")
    p = fsub.add_parser(
        "generate",
        help="ask a backend for candidate features of every unique report; append them to a cache",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=formatter,
        epilog="examples:\n"
        "  fgclep features generate --data 'shards/train-{000000..000099}.tar' --cache cands --backend kb\n"
        "  torchrun --nproc-per-node 8 -m fgclep_plugin.augment.generate --data ... --cache cands \\\n"
        "      --backend vllm --model meta-llama/Meta-Llama-3-8B-Instruct\n"
        "  vllm serve MODEL --port 8000 &  fgclep features generate ... --backend openai "
        "--base-url http://127.0.0.1:8000/v1",
    )
    p.add_argument("--data", required=True, help="shard spec (brace ranges, '::'-joined sets)")
    p.add_argument(
        "--cache", required=True, help="cache directory (created; shared by every run and process)"
    )
    p.add_argument("--backend", choices=BACKENDS, required=True, help="candidate generator")
    p.add_argument("--model", default=None, help="model directory or hub id (kb: the knowledge base version)")
    g = p.add_argument_group("answer")
    g.add_argument("--max-features", type=int, default=MAX_FEATURES, help="features asked for per report")
    g.add_argument("--max-feature-chars", type=int, default=MAX_FEATURE_CHARS, help="longest feature string")
    g.add_argument("--max-tokens", type=int, default=256, help="generated tokens per answer")
    g.add_argument("--batch-size", type=int, default=256, help="reports per engine call (and cache flush)")
    g.add_argument("--seed", type=int, default=0, help="vllm engine seed")
    g.add_argument("--lm-batch-size", type=int, default=8, help="transformers: prompts per generate call")
    e = p.add_argument_group("vllm engine (passed to vllm.LLM; unset = vLLM's default)")
    e.add_argument("--tensor-parallel-size", type=int, default=None, help="GPUs per engine (e.g. 4 for 70B)")
    e.add_argument("--max-model-len", type=int, default=None, help="context length")
    e.add_argument("--gpu-memory-utilization", type=float, default=None, help="share of GPU memory to use")
    e.add_argument(
        "--kv-cache-memory-bytes", type=int, default=None, help="KV-cache size (CPU: keep it small)"
    )
    e.add_argument("--dtype", default=None, help="weights dtype (auto, bfloat16, float16, float32)")
    e.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs / compilation")
    e.add_argument("--max-num-seqs", type=int, default=None, help="sequences per engine step")
    o = p.add_argument_group("openai-compatible server")
    o.add_argument("--base-url", default=None, help="server URL, e.g. http://127.0.0.1:8000/v1")
    o.add_argument(
        "--concurrency",
        type=int,
        default=4,
        help="requests in flight at once (429 / 5xx / connection errors are retried with backoff)",
    )
    o.add_argument(
        "--structured-output",
        choices=["response_format", "structured_outputs", "none"],
        default="response_format",
        help="how the JSON schema is sent (response_format json_schema; vLLM's structured_outputs field)",
    )
    s = p.add_argument_group("processes")
    s.add_argument(
        "--num-shards", type=int, default=None, help="processes splitting the reports (default WORLD_SIZE)"
    )
    s.add_argument("--shard-index", type=int, default=None, help="this process's part (default RANK)")
    p.add_argument("--summary-json", default=None, help="also write the summary to this file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_generate)


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m fgclep_plugin.augment.generate``: the same command without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="python -m fgclep_plugin.augment.generate")
    add_cli(parser.add_subparsers(dest="command", required=True), argparse.ArgumentDefaultsHelpFormatter)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] != ["features", "generate"]:
        argv = ["features", "generate", *argv]
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"features generate: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
