"""``fgclep augment``: validate every sample's candidate features with the stage-1 model and write new shards.

Output shard ``k`` holds input shard ``k``'s samples (same keys, same ECG): ``txt`` is the original report plus
the kept features as one sentence, ``json`` the input metadata plus ``stage2`` (the original report, every
candidate with its cosine, probability, calibrated threshold and decision, the rule, model and checkpoint).
Inputs are never modified. Each output shard is written atomically by the shard writer and skipped when a
re-run finds it complete, so a killed run resumes without duplicates or losses; a sample that cannot be read
goes to the rejects list with its reason and the rest of its shard is kept. Under ``accelerate launch`` /
``torchrun`` (``RANK``, ``WORLD_SIZE``) or ``--num-shards/--shard-index`` process ``r`` of ``n`` takes input
shards ``r, r + n, ...``; its input shards are decoded and transformed by ``--workers`` DataLoader processes while
the main process scores the shard before (:mod:`.shardscore`, which holds the work on the model: this module
loads no torch until a run starts, for the ``fgclep`` parser's start-up time).

Candidates come from the cache ``fgclep features generate`` fills; with ``--backend kb`` reports missing from
it are proposed in-process by the knowledge base and appended to the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..cliargs import (
    add_command,
    add_compute_arguments,
    add_data_argument,
    add_model_arguments,
    add_out_argument,
    add_quiet_argument,
    add_summary_json_argument,
)
from ..ecgdata import manifest as manifests
from ..ecgdata.opener import local_path, open_url
from ..ecgdata.outdir import check_writable_folder, remove_stale_temporaries
from ..ecgdata.reader import expand_urls, iter_raw
from ..ecgdata.records import RejectError
from ..ecgdata.shards import (
    SHARD_NUMBER,
    STATE_DIR,
    atomic_write_bytes,
    atomic_write_json,
    exclusive_lock,
    out_pattern_to_brace,
    write_one_shard,
)
from ..model.device import choose_device, process_part
from . import knowledge, oracle
from .cache import CandidateCache, load_entries
from .generate import process_index
from .rules import (
    CALIB_SIZE,
    COMPARED,
    COSINE_THRESHOLD,
    DEFAULT_RULE,
    PAPER_THRESHOLD,
    QUANTILE,
    RULES,
    WITHIN_PROPOSER_QUANTILE,
    RuleConfig,
    Tally,
    stored_decisions,
)
from .shardio import (
    PreparedShard,
    augmented_text,  # noqa: F401  imported from here by callers (the tests)
    read_shard,
)
from .text import PROMPT_VERSION, normalise_report

MAX_NAMED_WARNINGS = 20


def check_inputs(urls: Sequence[str]) -> None:
    """Raise ``FileNotFoundError`` naming the first input shard that is not there, before any work: a local
    file (a path or ``file:`` URL) is looked up, a remote one opened through the shard opener (its error names
    the URL; :class:`~fgclep_plugin.ecgdata.opener.MissingFilesystem` without the protocol's package). A
    ``pipe:`` command is not run to find out."""
    for url in urls:
        path = local_path(url)
        if path is not None:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"input shard {url} not found")
        elif not url.startswith("pipe:"):
            with open_url(url):
                pass


class CandidateSource:
    """Candidate features per report key: the cache, plus in-process knowledge-base answers for ``kb``."""

    def __init__(self, cache_dir: str, backend: str, model: str, prompt_version: str, index: int, n: int):
        self.cache_dir, self.backend, self.model, self.prompt_version = (
            cache_dir,
            backend,
            model,
            prompt_version,
        )
        self.index, self.n = index, n
        # a request that failed twice (status error) counts as 0 candidates, warned: the run goes on
        self.entries = load_entries(cache_dir, backend, model, prompt_version, include_errors=True)
        self.made: set[str] = set()
        self.cached: set[str] = set()
        self.warned = 0
        self.empty_reports: set[str] = set()

    def get(self, reports: dict[str, str]) -> dict[str, list[str]]:
        """Candidates of every key of ``reports`` (key -> normalised report)."""
        missing = [k for k in reports if k not in self.entries]
        if missing and self.backend != "kb":
            raise RuntimeError(
                f"{len(missing)} report(s) have no candidates in {self.cache_dir} for backend "
                f"{self.backend!r}, model {self.model!r}, prompt {self.prompt_version!r} (e.g. "
                f"{reports[missing[0]]!r:.80}); fill the cache first: fgclep features generate --data SHARDS "
                f"--cache {self.cache_dir} --backend {self.backend} --model {self.model}"
            )
        if missing:
            with CandidateCache(
                self.cache_dir, "kb", self.model, self.prompt_version, self.index, self.n
            ) as cache:
                for k in missing:
                    feats = knowledge.propose(reports[k])
                    cache.add(k, reports[k], feats, "ok" if feats else "empty", json.dumps(feats))
                    self.entries[k] = {"features": feats, "status": "ok" if feats else "empty"}
            self.made |= set(missing)
        self.cached |= {k for k in reports if k not in self.made}
        out = {}
        for k, text in reports.items():
            e = self.entries[k]
            feats = [str(f) for f in (e.get("features") or []) if isinstance(f, str) and f.strip()]
            feats = list(dict.fromkeys(feats))
            if not feats and k not in self.empty_reports:
                self.empty_reports.add(k)
                if self.warned < MAX_NAMED_WARNINGS:
                    self.warned += 1
                    warnings.warn(
                        f"report {k[:12]} ({text!r:.80}): cache entry has no candidates "
                        f"(status {e.get('status', '?')}); 0 candidates",
                        stacklevel=2,
                    )
            out[k] = feats
        return out


def _out_dir_and_name(out: str) -> tuple[Path, str]:
    name = Path(out).name
    if (
        "%" in str(Path(out).parent)
        or len(SHARD_NUMBER.findall(name)) != 1
        or "%" in SHARD_NUMBER.sub("", name)
    ):
        raise ValueError(f"--out must contain a shard number pattern such as NAME-%06d.tar, got {out!r}")
    return Path(out).parent, re.sub(r"-?%0?\d*d.*$", "", name) or "shard"


def _rule_label(cfg: RuleConfig) -> str:
    return cfg.describe()


def summarise(
    out_urls: Sequence[str], cfg: RuleConfig, compare: Sequence[RuleConfig] = COMPARED
) -> dict[str, Any]:
    """Summary of rewritten shards read back from their ``json`` members: counts, most kept / rejected
    features, the interval audit and, on synthetic samples, precision / recall of every compared rule over
    the features the report did not state."""
    tally = Tally()
    rules = [cfg] + [r for r in compare if r.describe() != cfg.describe()]
    reports: set[str] = set()
    for url in out_urls:
        for raw in iter_raw(url):
            meta = json.loads(raw["json"])
            s2 = meta.get("stage2") or {}
            cands = s2.get("candidates") or []
            reports.add(normalise_report(s2.get("report", "")))
            rule_sets = {r.describe(): stored_decisions(cands, r) for r in rules}
            tally.add(meta, s2.get("report", ""), cands, rule_sets)
    n = max(tally.samples, 1)
    return {
        "samples": tally.samples,
        "unique_reports": len(reports),
        "candidates_per_report": round(tally.candidates / n, 3),
        "kept_per_report": round(tally.kept / n, 3),
        "reports_without_candidates": tally.without_candidates,
        "most_kept": tally.kept_counts.most_common(10),
        "most_rejected": tally.rejected_counts.most_common(10),
        "audit": tally.audit_table(),
        "ground_truth": tally.truth_table(),
        "unscorable_candidates": tally.unscorable,
    }


def run_augment(
    data: str | Sequence[str],
    out: str,
    cache: str,
    model: str,
    checkpoint: str | None,
    cfg: RuleConfig | None = None,
    backend: str = "kb",
    llm_model: str | None = None,
    prompt_version: str = PROMPT_VERSION,
    calib_size: int = CALIB_SIZE,
    index: int = 0,
    n: int = 1,
    progress: bool = True,
    log=print,
    candidates: str = "cache",
    move_kept: int | None = None,
    device: str | None = "auto",
    precision: str = "fp32",
    workers: int = 0,
) -> dict[str, Any]:
    """Rewrite this process's input shards (``index`` of ``n``) into ``out % k``; returns the summary.
    ``device`` / ``precision`` / ``workers``: of the stage-1 model (:func:`~fgclep_plugin.model.scoring.load_model`).

    ``candidates``: ``"cache"`` (proposed features) or ``"truth"`` (every present feature the report does not
    state); ``move_kept``: seed of the derangement moving each shard's kept lists to other ECGs (the oracle arms,
    :mod:`fgclep_plugin.augment.oracle`)."""
    # torch, open_clip and the model's work: start-up time (the fgclep parser imports this module)
    from ..model.scoring import load_model
    from .shardscore import Calibration, TextTable, prepared_shards, process_shard

    t0 = time.time()
    device = choose_device(device)  # cuda:LOCAL_RANK under a launcher
    cfg = cfg or RuleConfig()
    urls = expand_urls(data)
    if not urls:
        raise ValueError(f"--data {data!r} names no shards")
    check_inputs(urls)
    out_dir, name = _out_dir_and_name(out)
    outs = [str(out_dir / Path(out % k).name) for k in range(len(urls))]
    local = {os.path.abspath(p) for p in map(local_path, urls) if p is not None}
    if local & {os.path.abspath(o) for o in outs}:
        raise ValueError("--out would overwrite an input shard; inputs are never modified")
    llm_model = llm_model or (knowledge.VERSION if backend == "kb" else None)
    if llm_model is None:
        raise ValueError(
            f"--llm-model is needed for backend {backend!r} (the model the cache was filled with)"
        )
    check_writable_folder(out_dir)  # before any work: one line, not a traceback after the model loaded
    state_dir = out_dir / STATE_DIR
    state_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "inputs": urls,
        "model": model,
        "checkpoint": manifests.checkpoint_id(checkpoint),
        "rule": cfg.describe(),
        "quantile": cfg.quantile,
        "calib_size": calib_size,
        "backend": backend,
        "llm_model": llm_model,
        "prompt_version": prompt_version,
    }
    if candidates not in ("cache", "truth"):
        raise ValueError(f"--candidates must be cache or truth, got {candidates!r}")
    if candidates != "cache":  # only when set: manifests of earlier runs stay valid
        manifest["candidates"] = candidates
    if move_kept is not None:
        manifest["move_kept"] = move_kept
    if cfg.rule == "oracle" or candidates == "truth":  # refuse data without ground truth before any work
        for key, s in read_shard(urls[0]):
            if not isinstance(s, RejectError):
                oracle.perfect_features(s["meta"], s["text"], f"{urls[0]}: sample {key}")
                break
    mpath = state_dir / f"{name}.augment-manifest.json"
    with exclusive_lock(state_dir / f"{name}.augment-manifest.lock", str(mpath), log):
        manifests.claim(mpath, manifest, f"{out_dir} holds stage-2 shards '{name}' made with other settings")
    mine = process_part(range(len(urls)), index, n)
    names = [Path(outs[k]).name for k in mine]  # this process's shards: partial files of killed runs go
    remove_stale_temporaries(out_dir, names)
    remove_stale_temporaries(state_dir, [f"{x}.json" for x in names])
    pending = [
        k
        for k in mine
        if not (Path(outs[k]).exists() and (state_dir / f"{Path(outs[k]).name}.json").exists())
    ]
    if log and len(pending) < len(mine):
        log(f"resuming: {len(mine) - len(pending)} of {len(mine)} shards already complete")
    cands = CandidateSource(cache, backend, llm_model, prompt_version, index, n)
    stats = {"written": 0, "rejected": 0}
    if pending:
        lm = load_model(model, checkpoint, device, precision, workers)
        if checkpoint is None:
            warnings.warn(f"no --checkpoint: validating with an untrained {model}", stacklevel=2)
        texts = TextTable(lm)
        calib = Calibration.load_or_build(
            state_dir / f"{name}.calibration", urls, calib_size, cfg.quantile, lm, texts, cands
        )
        provenance = {"model": model, "checkpoint": checkpoint, "backend": backend, "llm_model": llm_model}
        bar = tqdm(total=len(pending), unit="shard", desc="augment", disable=not progress)
        # the next shards are decoded and transformed by --workers processes while this one is scored
        for k, prepared in prepared_shards(lm, urls, pending):
            rng = None if move_kept is None else np.random.default_rng([move_kept, k])
            entries = process_shard(
                urls[k], prepared, lm, texts, cands, calib, cfg, provenance, candidates, rng
            )
            src = PreparedShard(entries)
            state = write_one_shard(src, src.items(), outs[k], str(state_dir / f"{Path(outs[k]).name}.json"))
            stats["written"] += state["count"]
            stats["rejected"] += len(state["rejects"])
            bar.update(1)
        bar.close()
    # sizes.json and the rejects list over every complete output shard (all processes' so far)
    sizes, rejects = {}, []
    with exclusive_lock(state_dir / "sizes.json.lock", str(out_dir / "sizes.json"), log):
        done = [k for k in range(len(urls)) if (state_dir / f"{Path(outs[k]).name}.json").exists()]
        for k in done:
            st = json.loads((state_dir / f"{Path(outs[k]).name}.json").read_text())
            sizes[Path(outs[k]).name] = st["count"]
            rejects += st["rejects"]
        sizes_path = out_dir / "sizes.json"
        all_sizes = json.loads(sizes_path.read_text()) if sizes_path.exists() else {}
        all_sizes.update(sizes)
        atomic_write_json(sizes_path, all_sizes)
        rejects_path = out_dir / f"{name}.rejects.jsonl"
        atomic_write_bytes(rejects_path, "".join(json.dumps(r) + "\n" for r in rejects).encode())
    summary = summarise([outs[k] for k in mine if Path(outs[k]).exists()], cfg)
    summary.update(
        {
            "rule": cfg.describe(),
            "process": f"{index} of {n}",
            "device": str(device),
            "precision": precision,
            "input_shards": len(urls),
            "shards_this_process": len(mine),
            "shards_written_now": len(pending),
            "rejected": len(rejects),
            "rejects_file": str(rejects_path),
            "llm_calls_made": len(cands.made),
            "llm_reports_cached": len(cands.cached),
            "reports_with_empty_candidates": len(cands.empty_reports),
            "urls": str(out_dir / out_pattern_to_brace(Path(out).name, len(urls))),
            "seconds": round(time.time() - t0, 2),
        }
    )
    return summary


def format_augment_summary(s: dict[str, Any]) -> str:
    """Human-readable summary."""
    head = f"stage 2 ({s['rule']}): {s['samples']} samples, {s['unique_reports']} unique reports, "
    head += f"{s['rejected']} rejected (see {s['rejects_file']}), {s['seconds']} s"
    calls = f"  candidate calls: {s['llm_calls_made']} made now, {s['llm_reports_cached']} reports from the "
    calls += f"cache; {s['reports_with_empty_candidates']} reports with no candidates"
    lines = [
        head,
        calls,
        f"  candidates per report {s['candidates_per_report']}, kept per report {s['kept_per_report']}",
        "  most kept:     " + ", ".join(f"{t} ({n})" for t, n in s["most_kept"][:6]),
        "  most rejected: " + ", ".join(f"{t} ({n})" for t, n in s["most_rejected"][:6]),
    ]
    if s["audit"]:
        lines.append("  audit against measured intervals (share agreeing):")
        for r in s["audit"]:
            lines.append(
                f"    {r['feature']:22s} kept {r['kept']:5d} agree {r['kept_agree']}   "
                f"rejected {r['rejected']:5d} agree {r['rejected_agree']}"
            )
    if s["ground_truth"]:
        lines.append("  ground truth, features the report did not state (precision / recall of present):")
        for r in s["ground_truth"]:
            lines.append(
                f"    {r['rule']:22s} pairs {r['pairs']:6d} kept {r['kept']:6d} "
                f"precision {r['precision']} recall {r['recall']}"
            )
    lines.append(f"  shards: {s['urls']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """``fgclep augment``."""
    index, n = process_index(args.num_shards, args.shard_index)
    cfg = RuleConfig(args.rule, args.paper_threshold, args.cosine_threshold, args.quantile)
    try:
        s = run_augment(
            args.data,
            args.out,
            args.cache,
            args.model,
            args.checkpoint,
            cfg,
            backend=args.backend,
            llm_model=args.llm_model,
            prompt_version=args.prompt_version,
            calib_size=args.calib_size,
            index=index,
            n=n,
            progress=not args.quiet,
            log=(lambda m: print(m, file=sys.stderr)),
            candidates=args.candidates,
            move_kept=args.move_kept,
            device=args.device,
            precision=args.precision,
            workers=args.workers,
        )
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"fgclep augment: error: {e}", file=sys.stderr)
        return 1
    print(format_augment_summary(s))
    if args.summary_json:
        atomic_write_json(args.summary_json, s)
    return 0


def _number_in(low: float, high: float, cast: type = float, closed: bool = True):
    """argparse type: a finite number in [low, high] (``closed=False``: (low, high)); else a usage error."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        inside = low <= value <= high if closed else low < value < high
        if not (np.isfinite(value) and inside):
            bounds = f"[{low:g}, {high:g}]" if closed else f"({low:g}, {high:g})"
            raise argparse.ArgumentTypeError(f"{text} is not in {bounds}")
        return value

    return parse


def add_cli(sub: argparse._SubParsersAction) -> None:
    """Register ``fgclep augment``."""
    p = add_command(
        sub,
        "augment",
        "stage 2: keep the candidate features the stage-1 model finds in each ECG; write new shards",
        __doc__,
        epilog="example:\n  fgclep augment --data 'data/synth/train/synth-train-{000000..000007}.tar' "
        "--cache cands --checkpoint runs/demo/stage1/checkpoints/epoch_6.pt --out aug/train-%06d.tar\n"
        "  (the paper's rule: --rule paper)",
    )
    add_data_argument(p, "input shards (brace ranges, '::' joins)")
    add_out_argument(p, "output shard pattern, e.g. aug/train-%%06d.tar")
    p.add_argument("--cache", required=True, help="candidate cache folder (fgclep features generate)")
    add_model_arguments(p)  # the stage-1 model: --model, --checkpoint (required; 'none' = random weights)
    p.add_argument(
        "--rule",
        choices=RULES,
        default=DEFAULT_RULE,
        help="decision rule. Calibrated per candidate (--quantile): quantile (cosine vs ECGs not proposing it), "
        "within-proposer (vs ECGs proposing it), lead-ensemble (ENS score), centred (cosine minus the ECG's mean "
        "over the vocabulary); cosine, paper (thresholds); oracle (synthetic truth)",
    )
    p.add_argument(
        "--paper-threshold",
        type=_number_in(0, 1, closed=False),
        default=PAPER_THRESHOLD,
        help="paper rule: probability",
    )
    p.add_argument(
        "--cosine-threshold", type=_number_in(-1, 1), default=COSINE_THRESHOLD, help="cosine rule: threshold"
    )
    p.add_argument(
        "--quantile",
        type=_number_in(0, 1, closed=False),
        default=None,
        help=f"calibrated rules' q (default {QUANTILE:g}; within-proposer {WITHIN_PROPOSER_QUANTILE:g})",
    )
    p.add_argument(
        "--calib-size",
        type=_number_in(1, 10**9, int),
        default=CALIB_SIZE,
        help="reference ECGs of the quantile rule",
    )
    p.add_argument("--backend", default="kb", help="candidate backend the cache was filled with")
    p.add_argument("--llm-model", default=None, help="the backend's model (default for kb: its version)")
    p.add_argument("--prompt-version", default=PROMPT_VERSION, help="prompt identity in the cache")
    p.add_argument("--num-shards", type=int, default=None, help="processes (default: WORLD_SIZE or 1)")
    p.add_argument("--shard-index", type=int, default=None, help="this process (default: RANK or 0)")
    p.add_argument(
        "--candidates",
        choices=("cache", "truth"),
        default="cache",
        help="cache: the proposed features; truth: every present feature the report omits (synthetic data; "
        "with --rule oracle the perfect-features arm)",
    )
    p.add_argument(
        "--move-kept",
        type=int,
        default=None,
        metavar="SEED",
        help="move each ECG's kept list to another ECG of its shard (seeded derangement): the wrong-features "
        "control",
    )
    add_compute_arguments(p)
    add_summary_json_argument(p)
    add_quiet_argument(p)
    p.set_defaults(func=run)
