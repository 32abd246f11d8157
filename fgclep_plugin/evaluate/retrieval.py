"""Retrieval over a shard set, the work of ``fgclep retrieve``: text -> top-k ECGs, ECG -> top-k reports,
Recall@k / precision@k against the ground truth the set carries, and the retrieved 12-lead ECGs drawn on ECG
paper (the paper's Figure 5). Ground truth by query kind, ranking ties and chance levels:
:data:`.commands.RETRIEVE` (the command's help). Embeddings come from :mod:`fgclep_plugin.model.scoring` (the
one embedding path: ``embed_shards``); matplotlib is imported where ECGs are drawn (start-up time of the runs
that draw none).
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cliargs import SYNTH_FEATURES
from ..ecgdata.ecg import FS, LEADS
from ..ecgdata.labels import labels_from_meta
from ..ecgdata.outdir import check_writable_folder
from ..ecgdata.plot import paper_size_mm, plot_ecg12, save_png
from ..ecgdata.reader import iter_samples
from ..ecgdata.shards import atomic_write_json
from ..model.scoring import LoadedModel, embed_shards, embed_texts, load_model, similarity
from ..model.zeroshot import load_prompt_map, mapped_prompt_text
from ..synth.vocabulary import FEATURES

# ---------------------------------------------------------------------------------------------- metrics


def rank_top_k(scores: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Indices ``[Q, min(k, N)]`` of the ``k`` highest scores of each row of ``scores [Q, N]``, best first;
    equal scores keep candidate order (stable sort)."""
    scores = np.asarray(scores)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, scores.shape[1])
    parts = [
        np.argsort(-scores[i : i + chunk], axis=1, kind="stable")[:, :k] for i in range(0, len(scores), chunk)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, k), dtype=np.int64)


def recall_at_k(scores: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """Fraction of queries (rows of ``relevant`` with at least one relevant candidate) that have a relevant
    candidate among their top ``k``; nan without such queries."""
    relevant = np.asarray(relevant, dtype=bool)
    rows = relevant.any(axis=1)
    if not rows.any():
        return float("nan")
    top = rank_top_k(np.asarray(scores)[rows], k)
    return float(np.take_along_axis(relevant[rows], top, axis=1).any(axis=1).mean())


def precision_at_k(scores: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    """Per query, the fraction of its top ``k`` (``min(k, N)``) candidates that are relevant, ``[Q]``."""
    relevant = np.asarray(relevant, dtype=bool)
    top = rank_top_k(scores, k)
    return np.take_along_axis(relevant, top, axis=1).mean(axis=1)


def chance_recall_at_k(n_relevant: Sequence[int], n: int, k: int) -> float:
    """Expected Recall@k of a uniformly random ranking of ``n`` candidates, averaged over queries with
    ``n_relevant`` (>= 1) relevant candidates each: ``1 - C(n - r, k) / C(n, k)``."""
    r = np.asarray([x for x in n_relevant if x > 0], dtype=float)
    if not len(r):
        return float("nan")
    miss = np.ones_like(r)
    for i in range(min(k, n)):
        miss *= np.clip((n - r - i) / (n - i), 0.0, None)
    return float(np.mean(1.0 - miss))


def recall_table(scores: np.ndarray, relevant: np.ndarray, ks: Sequence[int]) -> dict[str, Any]:
    """Recall@k and its chance level for each ``k`` in ``ks``, with the numbers of queries and candidates."""
    relevant = np.asarray(relevant, dtype=bool)
    n_rel = relevant.sum(axis=1)
    n = relevant.shape[1]
    return {
        "queries": int((n_rel > 0).sum()),
        "candidates": int(n),
        "recall": {str(k): recall_at_k(scores, relevant, k) for k in ks},
        "chance": {str(k): chance_recall_at_k(n_rel, n, k) for k in ks},
    }


# ------------------------------------------------------------------------------------------ embeddings


@dataclass
class EmbeddedSet:
    """A shard set's keys, reports, metadata and ECG embeddings ``[N, D]``, in shard order."""

    urls: str
    keys: list[str]
    texts: list[str]
    metas: list[dict[str, Any]]
    ecg_emb: torch.Tensor
    reports: list[str] = field(default_factory=list)  # distinct reports, first-seen order
    report_emb: torch.Tensor | None = None  # [len(reports), D]


def embed_shard_set(
    lm: LoadedModel, urls: str, batch_size: int = 64, progress: bool = True, with_reports: bool = True
) -> EmbeddedSet:
    """Embed every ECG of ``urls`` (:func:`~fgclep_plugin.model.scoring.embed_shards`) and, with
    ``with_reports``, each distinct report once (``embed_texts``). Raises ``ValueError`` on an empty set."""
    shards = embed_shards(lm, urls, batch_size, "ECGs" if progress else False)
    out = EmbeddedSet(urls, shards.keys, shards.texts, shards.metas, torch.from_numpy(shards.embeddings))
    if with_reports:
        out.reports = list(dict.fromkeys(out.texts))
        out.report_emb = embed_texts(
            lm.model,
            lm.tokenizer,
            out.reports,
            device=lm.device,
            precision=lm.precision,
            progress="reports" if progress else False,
        )
    return out


def report_relevance(texts: Sequence[str], reports: Sequence[str]) -> np.ndarray:
    """``[len(reports), len(texts)]``: True where ECG ``i``'s report equals distinct report ``u``."""
    index = {r: u for u, r in enumerate(reports)}
    rel = np.zeros((len(reports), len(texts)), dtype=bool)
    for i, t in enumerate(texts):
        rel[index[t], i] = True
    return rel


def class_relevance(metas: Sequence[dict], label_key: str) -> tuple[list[str], np.ndarray]:
    """Sorted class names of ``labels[label_key]`` and ``[C, N]``: True where ECG ``i`` has class ``c``."""
    labels = [set(labels_from_meta(m, label_key)) for m in metas]
    names = sorted(set().union(*labels))
    if not names:
        raise ValueError(f"no sample has labels[{label_key!r}]")
    rel = np.array([[c in lab for lab in labels] for c in names], dtype=bool)
    return names, rel


def prompt_map(prompts: str | None) -> dict[str, str]:
    """Class name -> query text: from a JSON file, the simulator's feature phrases (``synth-features``), or
    nothing (class names read as words)."""
    if not prompts:
        return {}
    if prompts == SYNTH_FEATURES:
        return {name: v["phrase"] for name, v in FEATURES.items()}
    return load_prompt_map(prompts)


# ------------------------------------------------------------------------------------------- retrieval


def _top_list(scores: np.ndarray, k: int, describe) -> list[dict[str, Any]]:
    top = rank_top_k(scores[None], k)[0]
    return [{"rank": r + 1, "score": float(scores[j]), **describe(int(j))} for r, j in enumerate(top)]


def retrieve(
    lm: LoadedModel,
    es: EmbeddedSet,
    k: int = 10,
    queries: Sequence[str] = (),
    ecg_keys: Sequence[str] = (),
    label_key: str | None = None,
    prompts: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """All retrieval results for an embedded set (see the module docstring for the ground truth)."""
    ks = sorted({1, 5, k})
    s_ecg_report = similarity(es.ecg_emb, es.report_emb).numpy()  # [N, U]
    rel = report_relevance(es.texts, es.reports)  # [U, N]
    result: dict[str, Any] = {
        "model": lm.name,
        "checkpoint": lm.checkpoint,
        "device": str(lm.device),
        "precision": lm.precision,
        "data": es.urls,
        "ecgs": len(es.keys),
        "distinct_reports": len(es.reports),
        "k": k,
        "score": "cosine",
        "ties": "equal scores keep shard order (stable sort)",
        "report_to_ecg": {
            **recall_table(s_ecg_report.T, rel, ks),
            "hit": "any ECG whose report text equals the query report",
        },
        "ecg_to_report": {
            **recall_table(s_ecg_report, rel.T, ks),
            "hit": "the ECG's own report text, among the set's distinct reports",
        },
    }

    def ecg_info(i: int) -> dict[str, Any]:
        return {"key": es.keys[i], "index": i, "report": es.texts[i]}

    if label_key:
        names, crel = class_relevance(es.metas, label_key)
        texts = [mapped_prompt_text(prompts or {}, c) for c in names]
        cs = similarity(
            embed_texts(lm.model, lm.tokenizer, texts, device=lm.device, precision=lm.precision), es.ecg_emb
        ).numpy()
        prec = precision_at_k(cs, crel, k)
        n = len(es.keys)
        per_class = {
            c: {
                "query": texts[i],
                "positives": int(crel[i].sum()),
                "precision": float(prec[i]),
                "chance_precision": float(crel[i].sum() / n),
                "hit": bool(crel[i][rank_top_k(cs[i : i + 1], k)[0]].any()),
            }
            for i, c in enumerate(names)
        }
        result["classes"] = {
            "label_key": label_key,
            "relevant": f"ECGs with the class in labels[{label_key!r}]",
            "mean_precision": float(prec.mean()),
            "mean_chance_precision": float(crel.sum(axis=1).mean() / n),
            **recall_table(cs, crel, ks),
            "per_class": per_class,
        }
    if queries:
        qs = similarity(
            embed_texts(lm.model, lm.tokenizer, list(queries), device=lm.device, precision=lm.precision),
            es.ecg_emb,
        ).numpy()
        result["text_queries"] = [
            {
                "query": q,
                "top": [{**t, "same_report": t["report"] == q} for t in _top_list(qs[i], k, ecg_info)],
            }
            for i, q in enumerate(queries)
        ]
    if ecg_keys:
        where = {key: i for i, key in enumerate(es.keys)}
        missing = [key for key in ecg_keys if key not in where]
        if missing:
            raise ValueError(f"no sample with key {missing[0]!r} in {es.urls}")
        result["ecg_queries"] = []
        for key in ecg_keys:
            i = where[key]
            top = _top_list(s_ecg_report[i], k, lambda u: {"report": es.reports[u]})
            for t in top:
                t["own_report"] = t["report"] == es.texts[i]
            result["ecg_queries"].append({"key": key, "report": es.texts[i], "top": top})
    return result


def load_samples(urls: str, indices: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The decoded samples at shard-order positions ``indices`` (one pass over the set)."""
    wanted, found = set(indices), {}
    for i, s in enumerate(iter_samples(urls)):
        if i in wanted:
            found[i] = s
            if len(found) == len(wanted):
                break
    return found


def plot_retrieved(
    query: str, top: Sequence[dict[str, Any]], samples: Mapping[int, dict], path: str | Path, dpi: int = 100
) -> Path:
    """The retrieved ECGs of one text query on ECG paper, one per row, each titled with rank, cosine, key and
    report (the paper's Figure 5); written atomically as PNG."""
    import matplotlib  # start-up time (module docstring)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen

    w_mm, h_mm = paper_size_mm()
    head_mm = 14.0
    fig = plt.figure(figsize=(w_mm / 25.4, (len(top) * h_mm + head_mm) / 25.4))
    fig.suptitle(
        textwrap.shorten(f"Query: {query}", 110, placeholder=" ..."),
        fontsize=12,
        x=0.01,
        ha="left",
        y=1 - 3.0 / (len(top) * h_mm + head_mm),
    )
    for r, t in enumerate(top):
        bottom = 1 - (head_mm + (r + 1) * h_mm) / (len(top) * h_mm + head_mm)
        ax = fig.add_axes((0.005, bottom, 0.99, h_mm / (len(top) * h_mm + head_mm) * 0.97))
        ecg = samples[t["index"]]["ecg"].astype(np.float32)
        mark = "  [same report as the query]" if t.get("same_report") else ""
        title = f"#{t['rank']}  cos {t['score']:.3f}{mark}  {t['key']}: {t['report']}"
        plot_ecg12(ecg, FS, LEADS, ax=ax, title=textwrap.shorten(title, 120, placeholder=" ..."))
    return save_png(fig, path, dpi)


def _slug(text: str, n: int = 40) -> str:
    s = "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")
    return "_".join(p for p in s.split("_") if p)[:n] or "query"


def format_result(r: dict[str, Any]) -> str:
    """Human-readable summary of :func:`retrieve`'s result."""
    k = str(r["k"])
    head = (
        f"{r['model']} ({r['checkpoint'] or 'untrained weights'}) on {r['data']}: {r['ecgs']} ECGs, "
        f"{r['distinct_reports']} distinct reports; cosine ranking, ties in shard order"
    )
    lines = [head]
    for name, what in (("report_to_ecg", "report -> ECG"), ("ecg_to_report", "ECG -> report")):
        t = r[name]
        rec = ", ".join(f"R@{kk} {v:.3f} (chance {t['chance'][kk]:.3f})" for kk, v in t["recall"].items())
        lines.append(f"{what}: {rec}; {t['queries']} queries over {t['candidates']} candidates ({t['hit']})")
    if "classes" in r:
        c = r["classes"]
        lines.append(
            f"class -> ECG (labels[{c['label_key']}], {len(c['per_class'])} classes): mean precision@{k} "
            f"{c['mean_precision']:.3f} (chance {c['mean_chance_precision']:.3f}), R@{k} {c['recall'][k]:.3f} "
            f"(chance {c['chance'][k]:.3f})"
        )
        for name, v in c["per_class"].items():
            lines.append(
                f"  {name:28s} P@{k} {v['precision']:.2f} (chance {v['chance_precision']:.2f}, "
                f"{v['positives']} positives)  query: {v['query']}"
            )
    for q in r.get("text_queries", []):
        lines.append(f"query: {q['query']}")
        for t in q["top"]:
            mark = " [same report]" if t["same_report"] else ""
            lines.append(
                f"  {t['rank']:3d}  {t['score']:.3f}  {t['key']}: {textwrap.shorten(t['report'], 90)}{mark}"
            )
        if q.get("figure"):
            lines.append(f"  drawn to {q['figure']}")
    for q in r.get("ecg_queries", []):
        lines.append(f"ECG {q['key']} (report: {textwrap.shorten(q['report'], 90)})")
        for t in q["top"]:
            mark = " [own report]" if t["own_report"] else ""
            lines.append(f"  {t['rank']:3d}  {t['score']:.3f}  {textwrap.shorten(t['report'], 90)}{mark}")
    return "\n".join(lines)


def run_retrieve(args: argparse.Namespace) -> int:
    """``fgclep retrieve``."""
    if args.k < 1:
        raise ValueError(f"--k must be >= 1, got {args.k}")
    if args.out:
        check_writable_folder(args.out)  # before embedding the shards
    torch.manual_seed(args.seed)
    lm = load_model(args.model, args.checkpoint, args.device, args.precision, args.workers)
    es = embed_shard_set(lm, args.data, batch_size=args.batch_size, progress=not args.quiet)
    result = retrieve(
        lm,
        es,
        args.k,
        args.query,
        args.ecg,
        args.label_key,
        prompt_map(args.prompts) if args.label_key else None,
    )
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        n_plot = min(args.plot_k, args.k)
        if n_plot > 0 and result.get("text_queries"):
            wanted = {t["index"] for q in result["text_queries"] for t in q["top"][:n_plot]}
            samples = load_samples(args.data, sorted(wanted))
            for q in result["text_queries"]:
                path = out / f"retrieval_{_slug(q['query'])}.png"
                q["figure"] = str(plot_retrieved(q["query"], q["top"][:n_plot], samples, path, args.dpi))
        atomic_write_json(out / "retrieval.json", result)
    print(format_result(result))
    if out is not None:
        print(f"results in {out / 'retrieval.json'}")
    return 0
