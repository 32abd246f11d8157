"""Retrieval (fgclep_plugin.evaluate.retrieval): Recall@k / precision@k against independent computations, and
``fgclep retrieve`` on the LUDB test shard against embeddings computed here."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_helpers import LUDB_TEST, tiny_checkpoint

from fgclep_plugin.cli import main
from fgclep_plugin.ecgdata.plot import paper_size_mm
from fgclep_plugin.ecgdata.reader import iter_samples
from fgclep_plugin.evaluate.retrieval import (
    chance_recall_at_k,
    precision_at_k,
    rank_top_k,
    recall_at_k,
    report_relevance,
)
from fgclep_plugin.model.scoring import embed_ecgs, embed_texts, load_model


def _ref_top(row: np.ndarray, k: int) -> list[int]:
    """Top k by score, equal scores in candidate order: a plain Python sort, independent of numpy's."""
    return sorted(range(len(row)), key=lambda j: (-row[j], j))[:k]


def test_recall_precision_and_ranking_match_independent_computation():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=(30, 40)), 1)  # rounded: many exact ties
    relevant = rng.random((30, 40)) < 0.08
    relevant[3] = False  # a query without relevant candidates does not count
    for k in (1, 5, 10, 40, 100):
        top = rank_top_k(scores, k)
        assert top.tolist() == [_ref_top(r, k) for r in scores]
        np.testing.assert_array_equal(top, np.argsort(-scores, axis=1, kind="stable")[:, :k])
        rows = [q for q in range(30) if relevant[q].any()]
        ref_recall = np.mean([any(relevant[q, j] for j in _ref_top(scores[q], k)) for q in rows])
        assert recall_at_k(scores, relevant, k) == pytest.approx(ref_recall, abs=1e-12)
        ref_prec = [sum(relevant[q, j] for j in _ref_top(scores[q], k)) / min(k, 40) for q in range(30)]
        np.testing.assert_allclose(precision_at_k(scores, relevant, k), ref_prec, atol=1e-12)
    assert np.isnan(recall_at_k(scores, np.zeros_like(relevant), 5))
    with pytest.raises(ValueError, match="k must be >= 1"):
        rank_top_k(scores, 0)


def test_chance_recall_is_the_exact_expectation_over_all_rankings():
    n, k = 8, 3
    for r in (1, 2, 5):
        hits = [any(j < r for j in top) for top in itertools.combinations(range(n), k)]
        assert chance_recall_at_k([r], n, k) == pytest.approx(np.mean(hits), abs=1e-12)
    assert chance_recall_at_k([1, 8], n, k) == pytest.approx((3 / 8 + 1.0) / 2)
    assert chance_recall_at_k([0, 2], n, 20) == 1.0  # k > n: every candidate retrieved; r = 0 skipped


def test_duplicate_reports_all_count_as_hits():
    texts = ["sinus rhythm", "atrial fibrillation", "sinus rhythm", "lvh"]
    reports = list(dict.fromkeys(texts))
    rel = report_relevance(texts, reports)
    assert rel.tolist() == [[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]]
    # report "sinus rhythm" ranks ECG 2 first: a hit although ECG 0 is the sample the query came from
    s = np.array([[0.1, 0.0, 0.9, 0.2], [0.0, 0.5, 0.0, 0.9], [0.0, 0.1, 0.2, 0.3]])
    assert recall_at_k(s, rel, 1) == pytest.approx(2 / 3)


def test_retrieve_cli_on_ludb_matches_embeddings_computed_here(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt", seed=1, epoch=1)
    query = "Rhythm: Sinus rhythm. Electric axis of the heart: normal."
    out = tmp_path / "eval"
    argv = ["retrieve", "--data", LUDB_TEST, "--model", "FGCLEP-Tiny", "--checkpoint", ckpt, "--k", "5"]
    argv += ["--query", query, "--ecg", "ludb_151", "--label-key", "Rhythms", "--out", str(out), "--quiet"]
    assert main(argv + ["--dpi", "30", "--plot-k", "2"]) == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "retrieval.json").read_text())

    lm = load_model("FGCLEP-Tiny", ckpt)
    samples = list(iter_samples(LUDB_TEST))
    keys, texts = [s["__key__"] for s in samples], [s["text"] for s in samples]
    x = torch.stack([lm.preprocess(torch.from_numpy(s["ecg"].astype(np.float32))) for s in samples])
    e = embed_ecgs(lm.model, [x]).numpy()
    reports = sorted(set(texts))
    t = embed_texts(lm.model, lm.tokenizer, reports).numpy()
    s = e @ t.T  # [ECG, report]
    own = np.array([reports.index(x) for x in texts])
    order = [np.argsort(-row, kind="stable")[:5] for row in s]
    ecg_to_report = np.mean([own[i] in order[i] for i in range(len(texts))])
    report_to_ecg = np.mean(
        [
            any(texts[j] == reports[u] for j in np.argsort(-s[:, u], kind="stable")[:5])
            for u in range(len(reports))
        ]
    )
    assert res["ecgs"] == 50 and res["distinct_reports"] == len(reports)
    assert res["ecg_to_report"]["recall"]["5"] == pytest.approx(ecg_to_report, abs=1e-9)
    assert res["report_to_ecg"]["recall"]["5"] == pytest.approx(report_to_ecg, abs=1e-9)
    assert f"R@5 {ecg_to_report:.3f}" in printed and f"R@5 {report_to_ecg:.3f}" in printed

    q = embed_texts(lm.model, lm.tokenizer, [query]).numpy()[0]
    top = [keys[j] for j in np.argsort(-(e @ q), kind="stable")[:5]]
    assert [r["key"] for r in res["text_queries"][0]["top"]] == top
    assert [r["same_report"] for r in res["text_queries"][0]["top"]] == [
        texts[keys.index(k)] == query for k in top
    ]
    sinus = res["classes"]["per_class"]["Sinus rhythm"]
    assert sinus["positives"] == sum("Sinus rhythm" in s["meta"]["labels"]["Rhythms"] for s in samples)
    i151 = keys.index("ludb_151")
    assert [r["report"] for r in res["ecg_queries"][0]["top"]] == [
        reports[u] for u in np.argsort(-s[i151], kind="stable")[:5]
    ]

    from PIL import Image

    fig = Path(res["text_queries"][0]["figure"])
    assert fig.parent == out and fig.suffix == ".png"
    w_mm, h_mm = paper_size_mm()
    with Image.open(fig) as im:
        assert im.format == "PNG"
        assert im.size == (int(w_mm / 25.4 * 30), int((2 * h_mm + 14.0) / 25.4 * 30))  # inches x dpi


def test_retrieve_cli_names_an_unknown_ecg_key(tmp_path, capsys):
    argv = ["retrieve", "--data", LUDB_TEST, "--model", "FGCLEP-Tiny", "--checkpoint", "none"]
    argv += ["--ecg", "ludb_999"]
    assert main([*argv, "--quiet"]) == 1
    assert "no sample with key 'ludb_999'" in capsys.readouterr().err
