"""Stage-2 validation: the stage-1 model decides which candidate features its ECG shows.

Every (ECG, candidate) pair gets the cosine of the two embeddings and the SigLIP probability
``sigmoid(t * cos + b)`` (``fgclep_plugin.model.scoring``: each ECG encoded once, each distinct candidate text
once, pairs scored in one gather). Decision rules (``--rule``):

* ``paper``: keep if the probability exceeds ``--paper-threshold`` (0.95, the paper's Algorithm 1);
* ``cosine``: keep if the cosine exceeds ``--cosine-threshold``;
* ``quantile`` (calibrated per feature): keep if the cosine exceeds the ``--quantile`` quantile of that
  candidate's cosines over reference ECGs whose reports do **not** propose it (up to ``--calib-size`` ECGs
  of the shard set). A feature the model scores high on every ECG is kept only where it scores higher still,
  and a phrase the text tower reads poorly (low cosines everywhere) can still be kept where it stands out.
* ``within-proposer``: the same with the reference ECGs whose reports **do** propose the candidate: keep if the
  cosine's rank among them is in the top ``1 - q`` (default q 0.5, the better-supported half). A candidate
  proposed for many ECGs is kept where the ECG supports it most relative to the others it was proposed for.
  (Like the quantile rule, a candidate with fewer than ``MIN_REFERENCE`` such ECGs is ranked among all.)
* ``lead-ensemble``: the quantile rule on the evaluation's ENS score (the maximum cosine over the candidate's
  ``"<phrase> in lead <x>"`` prompts and the phrase itself, :func:`fgclep_plugin.model.zeroshot.ens_prompts`).
* ``centred``: the quantile rule on the cosine minus the ECG's mean cosine over :data:`VOCABULARY` (every phrase
  of the knowledge base). An ECG close to all feature text is not credited with each one. A fixed vocabulary
  (not the batch's candidates) makes the offset a function of the ECG alone: the same when the ECG serves as a
  reference and when it is decided, whatever shard, batch or process decides it.

The audit compares kept interval features (slow / fast rate, long PR, wide QRS, long QT, axis deviation) with
the intervals a sample carries (synthetic ground truth; MIMIC-IV-ECG machine measurements), and on synthetic
samples kept features are scored against the ground truth over the features the report did not state. The rules,
the audit and the summary counts need no torch and live in :mod:`.rules`.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from ..model.scoring import (
    LoadedModel,
    embed_ecgs,
    embed_texts,
    one_thread,
    pair_cosines,
    pair_probability,
    similarity,
)
from ..model.zeroshot import ens_prompts, ens_scores
from . import knowledge

# the rules and the summary counts, which need no torch (start-up time), live in .rules
from .rules import CALIBRATED, MIN_REFERENCE, threshold_key

VOCABULARY = tuple(knowledge.PHRASE_TO_FEATURE)  # the centring reference: every knowledge-base phrase


def ens_root(text: str) -> str:
    """The phrase whose lead-ensemble prompts (:func:`~fgclep_plugin.model.zeroshot.ens_prompts`) ``text`` is one
    of: ``"wide qrs complex"`` for ``"wide qrs complex in lead V1"`` and for itself."""
    root = text.rsplit(" in lead ", 1)[0]
    return root if root and text in ens_prompts(root) else text


class TextTable:
    """Embeddings of candidate texts, each distinct text encoded once over the whole run.

    A text's embedding is a function of the text alone, not of the texts encoded before it: a batch's other rows
    change a row's float rounding (the matrix shapes), and a resumed run, a process of a split run or a rewritten
    shard meets the texts in another order than an uninterrupted run; a stored score or threshold differing in
    its last digit makes the shards differ. So every text is encoded in one fixed batch, the lead-ensemble group
    of its phrase (:func:`ens_root`: the phrase and its 12 lead prompts, which the ``lead-ensemble`` score needs
    anyway), on one torch thread on the CPU (small batches lose to the thread pool: ``scoring.one_thread``)."""

    def __init__(self, lm: LoadedModel):
        self.lm = lm
        self.index: dict[str, int] = {}
        self._chunks: list[torch.Tensor] = []
        self._emb = torch.zeros(0, 0)
        self._rows = 0  # rows embedded, in _emb and _chunks

    @property
    def emb(self) -> torch.Tensor:
        """``[rows, D]`` normalised float32 embeddings; ``text``'s is row ``index[text]``."""
        if self._chunks:
            self._emb = (
                torch.cat([self._emb, *self._chunks]) if self._emb.numel() else torch.cat(self._chunks)
            )
            self._chunks = []
        return self._emb

    def rows(self, texts: Sequence[str]) -> list[int]:
        """Row of every text, embedding the groups of the ones not seen before."""
        roots = dict.fromkeys(ens_root(t) for t in texts if t not in self.index)
        with one_thread() if self.lm.device.type == "cpu" else nullcontext():
            for root in roots:
                group = ens_prompts(root)
                lm = self.lm
                self._chunks.append(
                    embed_texts(lm.model, lm.tokenizer, group, device=lm.device, precision=lm.precision)
                )
                for i, t in enumerate(group):  # a text is only ever read from its own root's group
                    if ens_root(t) == root:
                        self.index[t] = self._rows + i
                self._rows += len(group)
        return [self.index[t] for t in texts]


def ecg_embeddings(lm: LoadedModel, xs: Sequence[torch.Tensor], batch_size: int = 64) -> torch.Tensor:
    """Normalised embeddings ``[N, D]`` of ECGs already passed through the model's eval transform, batched."""
    if not len(xs):
        return torch.zeros(0, 0)
    chunks = (torch.stack(list(xs[i : i + batch_size])) for i in range(0, len(xs), batch_size))
    return embed_ecgs(lm.model, chunks, device=lm.device, precision=lm.precision)


def centring_offset(ecg_emb: torch.Tensor, texts: TextTable) -> torch.Tensor:
    """``[N, 1]``: every ECG's mean cosine over :data:`VOCABULARY` (the ``centred`` score's offset)."""
    rows = texts.rows(VOCABULARY)  # before reading texts.emb: it may add rows
    return similarity(ecg_emb, texts.emb[rows]).mean(dim=1, keepdim=True)


def score_matrix(
    ecg_emb: torch.Tensor,
    texts: TextTable,
    cands: Sequence[str],
    score: str,
    offset: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[N, M]`` score of every ECG against every candidate text: ``cos``, ``ens`` (the evaluation's ENS: the
    maximum cosine over the candidate's lead prompts) or ``centred`` (the cosine minus the ECG's mean cosine
    over :data:`VOCABULARY`, ``offset`` when given: :func:`centring_offset`)."""
    if score == "ens":
        rows = texts.rows([p for c in cands for p in ens_prompts(c)])  # [M * 13], candidate-major
        return ens_scores(ecg_emb, texts.emb[rows])[1]
    rows = texts.rows(cands)
    cos = similarity(ecg_emb, texts.emb[rows])
    if score == "centred":
        return cos - (centring_offset(ecg_emb, texts) if offset is None else offset)
    if score != "cos":
        raise ValueError(f"unknown score {score!r}")
    return cos


@dataclass
class PairScores:
    """Scores of the pairs of one batch of ECGs: flat arrays over (ECG, candidate) pairs."""

    ecg_index: np.ndarray
    text_rows: np.ndarray
    cos: np.ndarray
    prob: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # score name -> per pair (EXTRA_SCORES)

    def of(self, score: str) -> np.ndarray:
        """The pairs' ``score`` (``cos`` or one of ``extra``)."""
        return self.cos if score == "cos" else self.extra[score]


def score_pairs(
    lm: LoadedModel,
    ecg_emb: torch.Tensor,
    candidates: Sequence[Sequence[str]],
    texts: TextTable,
    extra: Sequence[str] = (),
) -> PairScores:
    """Cosine, probability and the ``extra`` scores of every (ECG i, candidate of i) pair, in one gather."""
    ecg_index = [i for i, cands in enumerate(candidates) for _ in cands]
    flat = [c for cands in candidates for c in cands]
    rows = texts.rows(flat)
    if not flat:
        empty = np.zeros(0)
        return PairScores(empty.astype(int), empty.astype(int), empty, empty, {s: empty for s in extra})
    cos = pair_cosines(ecg_emb, texts.emb, ecg_index, rows)
    prob = pair_probability(cos, lm.logit_scale, lm.logit_bias)
    distinct = {c: j for j, c in enumerate(dict.fromkeys(flat))}  # text -> column of the score matrices
    col = [distinct[c] for c in flat]
    more = {s: score_matrix(ecg_emb, texts, list(distinct), s)[ecg_index, col].numpy() for s in extra}
    return PairScores(np.asarray(ecg_index), np.asarray(rows), cos.numpy(), prob.numpy(), more)


def calibrate(
    ecg_emb: torch.Tensor,
    proposed: Sequence[Sequence[str]],
    texts: TextTable,
    candidate_texts: Sequence[str],
    qs: Sequence[float],
    min_reference: int = MIN_REFERENCE,
) -> dict[str, dict[str, float]]:
    """Per-candidate thresholds of every calibrated rule (:data:`CALIBRATED`) at every ``q`` in ``qs``, keyed
    by :func:`threshold_key`: the ``q`` quantile of the rule's score over its reference ECGs, those whose own
    candidate list does not (``others``) or does (``proposers``) contain the candidate; all reference ECGs if
    fewer than ``min_reference`` qualify."""
    cand = list(dict.fromkeys(candidate_texts))
    if not cand or ecg_emb.numel() == 0:
        return {}
    sets = [set(p) for p in proposed]
    proposes = np.array([[c in s for c in cand] for s in sets], dtype=bool).reshape(len(sets), len(cand))
    needed = dict.fromkeys(score for score, _ in CALIBRATED.values())
    # one candidate at a time: a column of a matrix product rounds differently with other columns beside it,
    # and which candidates are calibrated together depends on the shards decided before (a resumed run)
    offset = centring_offset(ecg_emb, texts)  # [N_ref, 1], the same shape every time
    scores = {  # score -> [N_ref, M]
        s: np.concatenate([score_matrix(ecg_emb, texts, [c], s, offset).numpy() for c in cand], axis=1)
        for s in needed
    }
    out: dict[str, dict[str, float]] = {c: {} for c in cand}
    for rule, (score, reference) in CALIBRATED.items():
        for j, c in enumerate(cand):
            ref = proposes[:, j] if reference == "proposers" else ~proposes[:, j]
            values = scores[score][ref, j] if ref.sum() >= min_reference else scores[score][:, j]
            for q in qs:
                out[c][threshold_key(rule, q)] = float(np.quantile(values, q))
    return out


def naive_decisions(
    lm: LoadedModel, ecgs: Sequence[np.ndarray], candidates: Sequence[Sequence[str]], threshold: float
) -> list[list[tuple[float, bool]]]:
    """The paper's Algorithm 1 as written: one ECG forward and one text forward per (ECG, feature) pair;
    returns (probability, kept) per candidate. The reference the batched path is tested against."""
    out = []
    for x, cands in zip(ecgs, candidates):
        row = []
        for c in cands:
            e = embed_ecgs(lm.model, [lm.preprocess(x)[None]], device=lm.device, precision=lm.precision)
            t = embed_texts(lm.model, lm.tokenizer, [c], device=lm.device, precision=lm.precision)
            p = float(pair_probability((e * t).sum(-1), lm.logit_scale, lm.logit_bias)[0])
            row.append((p, p > threshold))
        out.append(row)
    return out
