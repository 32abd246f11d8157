"""Stage-2 validation speed: batched decisions against the paper's Algorithm 1 run naively, side by side.

``python -m fgclep_plugin.bench.validate [--ecgs 200] [--naive-ecgs 10] [--candidates 10]``

Naive: one ECG forward and one text forward per (ECG, feature) pair (Algorithm 1 as written). Batched
(``fgclep augment``): each ECG embedded once, each distinct candidate text once, pairs scored in one gather.
Both run on the same synthetic ECGs with knowledge-base candidates padded to ``--candidates`` per report;
the decisions on the pairs both scored must agree (the speed-up is per pair). Target: >= 100x at 10
candidates per report.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from ..augment import knowledge as kb
from ..augment.rules import RuleConfig, decide
from ..augment.validate import TextTable, ecg_embeddings, naive_decisions, score_pairs
from ..ecgdata.ecg import canonicalize
from ..model.scoring import load_model
from ..synth.source import synth_record
from .args import bench_parser


def _candidates(reports: list[str], k: int) -> list[list[str]]:
    pool = list(dict.fromkeys(kb.phrase(n) for n in list(kb.FEATURES) + list(kb.EXTRA_PHRASES)))
    out = []
    for i, r in enumerate(reports):
        c = kb.propose(r)[:k]
        extra = [p for p in pool[i % len(pool) :] + pool if p not in c]
        out.append((c + extra)[:k])
    return out


def main(argv: list[str] | None = None) -> int:
    """Time both paths and print them side by side."""
    ap = bench_parser("validate", __doc__, checkpoint_help="stage-1 checkpoint")
    ap.add_argument("--ecgs", type=int, default=200, help="ECGs validated by the batched path")
    ap.add_argument("--naive-ecgs", type=int, default=10, help="ECGs validated naively (the first ones)")
    ap.add_argument("--candidates", type=int, default=10, help="candidates per report")
    ap.add_argument("--threshold", type=float, default=0.5, help="probability threshold of the decisions")
    args = ap.parse_args(argv)

    torch.set_num_threads(max(1, torch.get_num_threads()))
    recs = [synth_record(7, "test", i) for i in range(args.ecgs)]
    ecgs = [canonicalize(r)[0] for r in recs]
    cands = _candidates([r.report for r in recs], args.candidates)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = load_model(args.model, args.checkpoint)
    cfg = RuleConfig("paper", paper_threshold=args.threshold)

    # warm-up both paths once
    naive_decisions(lm, ecgs[:1], [cands[0][:1]], args.threshold)
    ecg_embeddings(lm, [lm.preprocess(x) for x in ecgs[:2]])

    t0 = time.perf_counter()
    texts = TextTable(lm)
    emb = ecg_embeddings(lm, [lm.preprocess(x) for x in ecgs])
    sc = score_pairs(lm, emb, cands, texts)
    kept = decide(sc.cos, sc.prob, None, cfg)
    t_batched = time.perf_counter() - t0
    n_batched = len(sc.cos)

    n_naive_ecgs = min(args.naive_ecgs, len(ecgs))
    t0 = time.perf_counter()
    naive = naive_decisions(lm, ecgs[:n_naive_ecgs], cands[:n_naive_ecgs], args.threshold)
    t_naive = time.perf_counter() - t0
    flat = [p for row in naive for p in row]
    n_naive = len(flat)
    prob_naive = np.array([p for p, _ in flat])
    same = np.array([k for _, k in flat]) == kept[:n_naive]
    max_diff = float(np.abs(prob_naive - sc.prob[:n_naive]).max())

    rate_b, rate_n = n_batched / t_batched, n_naive / t_naive
    print(f"model {args.model}, {args.candidates} candidates per report, threads {torch.get_num_threads()}")
    print(f"{'path':28s} {'ECGs':>6s} {'pairs':>7s} {'seconds':>9s} {'pairs/s':>10s}")
    print(f"{'naive (Algorithm 1)':28s} {n_naive_ecgs:6d} {n_naive:7d} {t_naive:9.2f} {rate_n:10.1f}")
    print(f"{'batched (fgclep augment)':28s} {len(ecgs):6d} {n_batched:7d} {t_batched:9.2f} {rate_b:10.1f}")
    print(f"speed-up per pair: {rate_b / rate_n:.0f}x (target >= 100x)")
    print(
        f"decisions on the {n_naive} common pairs: {int(same.sum())} equal; "
        f"largest probability difference {max_diff:.2e}; distinct candidate texts {len(texts.index)}"
    )
    return 0 if same.all() else 1


if __name__ == "__main__":
    raise SystemExit(main())
