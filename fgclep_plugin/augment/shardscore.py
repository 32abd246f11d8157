"""``fgclep augment``'s work on the stage-1 model: the calibration reference and the scoring and rewriting of one
input shard, its samples decoded and transformed by the model's ``--workers`` DataLoader processes while the
main process encodes and scores the shard before (:func:`prepared_shards`).

A shard is the unit of that work, as it is of the output: its fresh ECGs are embedded in fixed batches of that
shard's own samples, in input order, whichever worker read it and whichever shards are still to do. An ECG
embedding's last bits depend on the batch beside it (the encoder's kernels by batch shape), so a batch made of
one shard's samples only keeps a resumed run's rewrite of a lost shard byte for byte the same
(``test_augment_rewrites_shards_and_resumes``); the reference ECGs come from the saved calibration, and texts
and thresholds are batch-independent by construction (:class:`~fgclep_plugin.augment.validate.TextTable`,
:func:`~fgclep_plugin.augment.validate.calibrate`). (Not :func:`fgclep_plugin.model.scoring.embed_shards`: its
batches run across shard boundaries, its reader stops at a sample it cannot decode where augment rejects that
sample and keeps the rest, and the rewrite needs each sample's ECG and metadata back.)
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..ecgdata.records import CanonicalSample, RejectError
from ..ecgdata.shards import atomic_write_bytes, atomic_write_json
from ..model.scoring import LoadedModel, as_is, one_thread
from . import knowledge, oracle
from .rules import COMPARED, EXTRA_SCORES, QUANTILES, RuleConfig, decide
from .shardio import augmented_text, read_shard
from .text import normalise_report, report_key
from .validate import TextTable, calibrate, ecg_embeddings, score_pairs


class Candidates(Protocol):
    """Where candidate features come from (``rewrite.CandidateSource``)."""

    def get(self, reports: dict[str, str]) -> dict[str, list[str]]:
        """Candidates of every key of ``reports`` (key -> normalised report)."""
        ...


def prepare_shard(
    url: str, preprocess, limit: int | None = None
) -> list[tuple[str, Any, torch.Tensor | None]]:
    """One input shard read and transformed: (key, decoded sample, its ECG through the model's eval transform
    ``preprocess``) per sample in input order, or (key, (reason, message), None) for a sample that is rejected
    (:func:`~.shardio.read_shard`'s rejects, and ``bad-ecg`` where the transform refuses the ECG): a
    ``RejectError``'s fields, since the error itself does not cross from a worker process intact. On one torch
    thread, as in a DataLoader worker (``scoring.one_thread``: per-sample transforms lose to the thread pool).
    ``limit``: stop after that many samples that are not rejected (the calibration's first samples)."""
    out: list[tuple[str, Any, torch.Tensor | None]] = []
    good = 0
    with one_thread():
        for key, s in read_shard(url):
            if limit is not None and good >= limit:
                break
            if isinstance(s, RejectError):
                out.append((key, (s.reason, s.message), None))
                continue
            try:
                x = preprocess(s["ecg"])
            except ValueError as e:
                out.append((key, ("bad-ecg", f"{url}: sample {key}: {e}"), None))
                continue
            out.append((key, s, x))
            good += 1
    return out


class PreparedShards(torch.utils.data.IterableDataset):
    """``(k, prepare_shard(urls[k], preprocess, limit))`` for every ``k`` of ``numbers``, prepared where they are
    read (a DataLoader worker, or the main process without workers); worker ``w`` of ``W`` takes
    ``numbers[w::W]``."""

    def __init__(self, urls: Sequence[str], numbers: Sequence[int], preprocess, limit: int | None = None):
        self.urls, self.numbers, self.preprocess, self.limit = list(urls), list(numbers), preprocess, limit

    def __iter__(self) -> Iterator[tuple[int, list]]:
        info = torch.utils.data.get_worker_info()
        w, n = (0, 1) if info is None else (info.id, info.num_workers)
        for k in self.numbers[w::n]:
            yield k, prepare_shard(self.urls[k], self.preprocess, self.limit)


def prepared_shards(
    lm: LoadedModel, urls: Sequence[str], numbers: Sequence[int], limit: int | None = None
) -> Iterator[tuple[int, list]]:
    """``(k, prepared shard k)`` (:func:`prepare_shard`, up to ``limit`` good samples) for the shards ``numbers``
    of ``urls``, decoded and transformed by ``lm.workers`` DataLoader processes (at most one per shard, each
    holding one prepared shard ahead) while the caller works on the one before; in ``numbers`` order without
    workers, else taking the workers in turn."""
    workers = min(lm.workers, len(numbers))
    loader = torch.utils.data.DataLoader(
        PreparedShards(urls, numbers, lm.preprocess, limit),
        batch_size=None,  # a shard is the item
        collate_fn=as_is,  # the samples' numpy arrays stay numpy arrays
        num_workers=workers,
        prefetch_factor=1 if workers else None,  # a whole shard in memory per item
    )
    yield from loader


class Calibration:
    """Reference ECG embeddings and their candidate lists, saved beside the outputs so a resumed run (and
    every process) calibrates on the same reference; thresholds per candidate text computed on demand, for the
    run's quantile and the compared ones."""

    def __init__(
        self,
        emb: torch.Tensor,
        proposed: list[list[str]],
        q: float,
        texts: TextTable,
        samples: Sequence[str] = (),
    ):
        self.emb, self.proposed, self.texts = emb, proposed, texts
        # "shard name/key" -> row: a reference ECG is not encoded a second time when its shard is rewritten
        self.rows = {k: i for i, k in enumerate(samples)}
        self.qs = sorted({float(q), *QUANTILES, *(r.quantile for r in COMPARED)})
        self.thresholds: dict[str, dict[str, float]] = {}

    def threshold(self, candidates: Sequence[str]) -> list[dict[str, float]]:
        """Calibrated thresholds (validate.threshold_key -> threshold) per candidate text ({} without a
        reference)."""
        new = [c for c in dict.fromkeys(candidates) if c not in self.thresholds]
        if new:
            got = calibrate(self.emb, self.proposed, self.texts, new, self.qs)
            for c in new:
                self.thresholds[c] = got.get(c, {})
        return [self.thresholds[c] for c in candidates]

    @classmethod
    def load_or_build(
        cls,
        state: Path,
        urls: Sequence[str],
        calib_size: int,
        q: float,
        lm,
        texts: TextTable,
        cands: Candidates,
    ) -> Calibration:
        """Load ``state``.npy/.json or build it from the first samples of every input shard (read and transformed
        by the model's workers, :func:`prepared_shards`)."""
        npy, meta = state.with_suffix(".npy"), state.with_suffix(".json")
        if npy.exists() and meta.exists():
            emb = torch.from_numpy(np.load(npy, allow_pickle=False))
            saved = json.loads(meta.read_text())
            return cls(emb, saved["proposed"], q, texts, saved.get("samples", ()))
        per_shard = max(1, -(-calib_size // max(1, len(urls))))
        ecgs, reports, names = [], [], []
        shards = dict(prepared_shards(lm, urls, range(len(urls)), limit=per_shard))
        for k, url in enumerate(urls):  # in input order, whichever worker read the shard
            for key, s, x in shards.pop(k):
                if x is None:  # a rejected sample is not a reference
                    continue
                ecgs.append(x)
                names.append(f"{Path(url).name}/{key}")
                reports.append(normalise_report(s["text"]))
        keys = [report_key(r) for r in reports]
        got = cands.get(dict(zip(keys, reports)))
        proposed = [got[k] for k in keys]
        emb = ecg_embeddings(lm, ecgs)
        atomic_write_bytes(npy, _npy_bytes(emb.numpy()))
        atomic_write_json(
            meta, {"n": len(keys), "per_shard": per_shard, "samples": names, "proposed": proposed}
        )
        return cls(emb, proposed, q, texts, names)


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def process_shard(
    url: str,
    prepared: Sequence[tuple[str, Any, torch.Tensor | None]],
    lm,
    texts: TextTable,
    cands: Candidates,
    calib: Calibration,
    cfg: RuleConfig,
    provenance: dict[str, Any],
    candidates: str = "cache",
    move_rng: np.random.Generator | None = None,
) -> list[tuple[str, CanonicalSample | RejectError]]:
    """Score and rewrite one input shard, read and transformed as ``prepared`` (:func:`prepare_shard`), in
    memory: (key, rewritten sample or reject) in input order.

    ``candidates="truth"``: each sample's candidates are its present features the report does not state
    (perfect features); ``move_rng``: the kept lists are moved to other samples of the shard (wrong features)."""
    entries: list[tuple[str, Any]] = []
    good: list[tuple[int, dict[str, Any], torch.Tensor]] = []
    for key, s, x in prepared:
        if x is None:  # (reason, message) of a reject
            entries.append((key, RejectError(*s)))
            continue
        entries.append((key, None))
        good.append((len(entries) - 1, s, x))
    reports = [normalise_report(s["text"]) for _, s, _ in good]
    keys = [report_key(r) for r in reports]
    where = [f"{url}: sample {s['__key__']}" for _, s, _ in good]
    if candidates == "truth":
        cand_lists = [oracle.perfect_features(s["meta"], s["text"], w) for (_, s, _), w in zip(good, where)]
    else:
        got = cands.get(dict(zip(keys, reports)))
        cand_lists = [got[k] for k in keys]
    # reference ECGs of the calibration are already embedded: encode only the others
    ref = [calib.rows.get(f"{Path(url).name}/{s['__key__']}") for _, s, _ in good]
    fresh = ecg_embeddings(lm, [x for (_, _, x), r in zip(good, ref) if r is None])
    emb = torch.zeros(len(good), calib.emb.shape[1] if calib.emb.numel() else fresh.shape[-1])
    todo = [i for i, r in enumerate(ref) if r is None]
    if todo:
        emb[todo] = fresh
    done = [(i, r) for i, r in enumerate(ref) if r is not None]
    if done:
        emb[[i for i, _ in done]] = calib.emb[[r for _, r in done]]
    scores = score_pairs(lm, emb, cand_lists, texts, EXTRA_SCORES)
    flat = [c for cl in cand_lists for c in cl]
    thr_all = calib.threshold(flat)
    thr = np.array([t.get(cfg.threshold_key(), np.nan) for t in thr_all], dtype=np.float64)
    truth = None
    if cfg.rule == "oracle":
        truth = [t for (_, s, _), cl, w in zip(good, cand_lists, where)
                 for t in oracle.candidate_truth(s["meta"], s["text"], cl, w)]  # fmt: skip
    kept = decide(scores.of(cfg.score), scores.prob, thr, cfg, truth)
    pos = 0
    all_rows = []
    for cl in cand_lists:
        rows = []
        for c in cl:
            rows.append(
                {
                    "text": c,
                    "feature": knowledge.feature_of(c),
                    "cos": round(float(scores.cos[pos]), 6),
                    "prob": round(float(scores.prob[pos]), 6),
                    "scores": {k: round(float(v[pos]), 6) for k, v in scores.extra.items()},
                    "threshold": None if np.isnan(thr[pos]) else round(float(thr[pos]), 6),
                    "thresholds": {k: round(v, 6) for k, v in thr_all[pos].items()},
                    "kept": bool(kept[pos]),
                }
            )
            pos += 1
        all_rows.append(rows)
    donors = list(range(len(good))) if move_rng is None else oracle.derangement(len(good), move_rng)
    for (slot, s, _), d in zip(good, donors):
        rows = all_rows[d]  # with --move-kept: another sample's candidates and decisions
        keep_texts = [r["text"] for r in rows if r["kept"]]
        meta = dict(s["meta"])
        meta["stage2"] = {
            "report": s["text"],
            "rule": cfg.describe(),
            "kept": keep_texts,
            "candidates": rows,
            **provenance,
        }
        if move_rng is not None:
            meta["stage2"]["moved_from"] = good[d][1]["__key__"]
        key = s["__key__"]
        entries[slot] = (key, CanonicalSample(key, s["ecg"], augmented_text(s["text"], keep_texts), meta))
    return entries
