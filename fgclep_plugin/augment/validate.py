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
samples kept features are scored against the ground truth over the features the report did not state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

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

# Calibrated rules: keep a pair if its score exceeds the candidate's threshold, the q quantile of that score
# over the reference ECGs whose reports do not propose the candidate ("others") or do ("proposers").
CALIBRATED: dict[str, tuple[str, str]] = {  # rule -> (score, reference ECGs)
    "quantile": ("cos", "others"),
    "within-proposer": ("cos", "proposers"),
    "lead-ensemble": ("ens", "others"),
    "centred": ("centred", "others"),
}
EXTRA_SCORES = ("ens", "centred")  # scores besides the cosine, stored per candidate for the summary
RULES = (*CALIBRATED, "cosine", "paper", "oracle")  # oracle: ground truth (augment/oracle.py)
DEFAULT_RULE = "quantile"
PAPER_THRESHOLD = 0.95
COSINE_THRESHOLD = 0.3
QUANTILE = 0.9
WITHIN_PROPOSER_QUANTILE = 0.5  # no per-feature base rate is known: split the proposers at the median
VOCABULARY = tuple(knowledge.PHRASE_TO_FEATURE)  # the centring reference: every knowledge-base phrase
CALIB_SIZE = 2000
MIN_REFERENCE = 20  # fewer reference ECGs than this: the candidate's threshold uses every reference ECG


@dataclass
class RuleConfig:
    """A decision rule and its parameters."""

    rule: str = DEFAULT_RULE
    paper_threshold: float = PAPER_THRESHOLD
    cosine_threshold: float = COSINE_THRESHOLD
    quantile: float | None = None  # None: the rule's default (QUANTILE; within-proposer 0.5)

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"unknown decision rule {self.rule!r}; expected one of {RULES}")
        if self.quantile is None:
            self.quantile = WITHIN_PROPOSER_QUANTILE if self.rule == "within-proposer" else QUANTILE
        if not 0.0 < self.quantile < 1.0:
            raise ValueError(f"--quantile must be in (0, 1), got {self.quantile}")

    def describe(self) -> str:
        """``"quantile q=0.9"``-style label of the rule."""
        if self.rule == "paper":
            return f"paper p>{self.paper_threshold:g}"
        if self.rule == "cosine":
            return f"cosine>{self.cosine_threshold:g}"
        if self.rule == "oracle":
            return "oracle (ground truth)"
        return f"{self.rule} q={self.quantile:g}"

    @property
    def score(self) -> str:
        """The pair score the rule compares: ``cos``, ``ens`` or ``centred``."""
        return CALIBRATED.get(self.rule, ("cos",))[0]

    def threshold_key(self) -> str:
        """Key of the rule's threshold in a candidate's stored ``thresholds``."""
        return threshold_key(self.rule, self.quantile)


def threshold_key(rule: str, q: float) -> str:
    """``"0.9"`` for the quantile rule (as stored before the other calibrated rules), ``"centred 0.9"``."""
    return f"{q:g}" if rule == "quantile" else f"{rule} {q:g}"


def decide(
    score: np.ndarray,
    prob: np.ndarray,
    threshold: np.ndarray | None,
    cfg: RuleConfig,
    truth: np.ndarray | None = None,
) -> np.ndarray:
    """Keep (bool) per pair under ``cfg``; ``score`` is each pair's ``cfg.score`` (the cosine but for
    lead-ensemble and centred), ``threshold`` its calibrated threshold, ``truth`` whether each pair's feature
    is present (the oracle rule keeps exactly those)."""
    if cfg.rule == "oracle":
        if truth is None:
            raise ValueError("the oracle rule needs the ground truth of every candidate")
        return np.asarray(truth, dtype=bool)
    if cfg.rule == "paper":
        return np.asarray(prob) > cfg.paper_threshold
    if cfg.rule == "cosine":
        return np.asarray(score) > cfg.cosine_threshold
    if threshold is None:
        raise ValueError(f"the {cfg.rule} rule needs calibrated thresholds")
    thr = np.asarray(threshold, dtype=np.float64)
    return np.asarray(score) > np.where(np.isnan(thr), np.inf, thr)


def stored_decisions(rows: Sequence[dict[str, Any]], cfg: RuleConfig) -> list[bool]:
    """``cfg``'s decisions recomputed from a rewritten sample's candidate rows (``stage2.candidates``: ``cos``,
    ``prob``, ``scores``, ``thresholds``); the oracle's are the stored ones, decided from the truth."""
    if cfg.rule == "oracle":
        return [bool(r["kept"]) for r in rows]
    holder = [r if cfg.score == "cos" else r.get("scores") or {} for r in rows]  # cos or the extra scores
    score = np.array([h.get(cfg.score, np.nan) for h in holder], dtype=np.float64)
    prob = np.array([r["prob"] for r in rows], dtype=np.float64)
    thr = np.array(
        [(r.get("thresholds") or {}).get(cfg.threshold_key(), np.nan) for r in rows], dtype=np.float64
    )
    return decide(score, prob, thr, cfg).tolist()


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


# ---------------------------------------------------------------------------------------------------------
# Audit against measured intervals, and scoring against synthetic ground truth
# ---------------------------------------------------------------------------------------------------------
INTERVAL_FEATURES = (
    "slow_rate",
    "fast_rate",
    "long_pr",
    "wide_qrs",
    "long_qt",
    "negative_qrs_inferior",
    "negative_qrs_lead_i",
)


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def measured_intervals(meta: dict[str, Any]) -> dict[str, float]:
    """Heart rate (bpm), PR, QRS, QTc (Fridericia, ms) and QRS axis (degrees) a sample carries: synthetic
    ground truth (``synth.measurements``) or machine measurements (``machine_measurements``, as the MIMIC-IV-ECG
    converter keeps them: ``rr_interval``, ``p_onset``, ``qrs_onset``, ``qrs_end``, ``t_end``, ``qrs_axis``).
    Missing or implausible values (MIMIC writes 29999 for "not measured") are left out."""
    out: dict[str, float] = {}
    syn = (meta.get("synth") or {}).get("measurements")
    if isinstance(syn, dict):
        for name, key in (
            ("hr", "hr_bpm"),
            ("pr", "pr_ms"),
            ("qrs", "qrs_ms"),
            ("qtc", "qtc_fridericia_ms"),
            ("axis", "qrs_axis_deg"),
        ):
            v = _num(syn.get(key))
            if v is not None:
                out[name] = v
        return out
    m = meta.get("machine_measurements")
    if not isinstance(m, dict):
        return out

    def ok(name: str, lo: float, hi: float) -> float | None:
        v = _num(m.get(name))
        return v if v is not None and lo <= v <= hi else None

    rr = ok("rr_interval", 200, 3000)
    p_on, q_on, q_end, t_end = (ok(k, 0, 10000) for k in ("p_onset", "qrs_onset", "qrs_end", "t_end"))
    if rr is not None:
        out["hr"] = 60000.0 / rr
    if p_on is not None and q_on is not None and 40 <= q_on - p_on <= 600:
        out["pr"] = q_on - p_on
    if q_on is not None and q_end is not None and 40 <= q_end - q_on <= 300:
        out["qrs"] = q_end - q_on
    if q_on is not None and t_end is not None and rr is not None and 150 <= t_end - q_on <= 800:
        out["qtc"] = (t_end - q_on) / (rr / 1000.0) ** (1 / 3)
    axis = ok("qrs_axis", -180, 360)
    if axis is not None:
        out["axis"] = axis - 360 if axis > 180 else axis
    return out


def interval_truth(feature: str, iv: dict[str, float]) -> bool | None:
    """Whether the measured intervals show an interval feature (None: not measured)."""
    rules: dict[str, tuple[str, Callable[[float], bool]]] = {
        "slow_rate": ("hr", lambda v: v < 60),
        "fast_rate": ("hr", lambda v: v > 100),
        "long_pr": ("pr", lambda v: v > 200),
        "wide_qrs": ("qrs", lambda v: v >= 120),
        "long_qt": ("qtc", lambda v: v > 460),
        "negative_qrs_inferior": ("axis", lambda v: v < -30),
        "negative_qrs_lead_i": ("axis", lambda v: v > 90),
    }
    key, test = rules[feature]
    return None if key not in iv else bool(test(iv[key]))


def unstated_truth(meta: dict[str, Any], report: str) -> tuple[set[str], set[str]] | None:
    """(present features, features the report states) of a synthetic sample; None without ground truth."""
    syn = meta.get("synth")
    labels = (meta.get("labels") or {}).get("features")
    if not isinstance(syn, dict) or labels is None:
        return None
    stated = set(syn.get("mentioned_features") or []) | knowledge.stated_features(report)
    return set(labels), stated


@dataclass
class Tally:
    """Running counts for the end-of-run summary."""

    samples: int = 0
    candidates: int = 0
    kept: int = 0
    kept_counts: Counter = field(default_factory=Counter)
    rejected_counts: Counter = field(default_factory=Counter)
    audit: Counter = field(default_factory=Counter)  # (feature, "kept"/"rejected", agree/disagree)
    # ground truth: per rule label -> Counter(tp, fp, present_candidates) over unstated scorable candidates
    truth: dict[str, Counter] = field(default_factory=dict)
    unscorable: int = 0
    without_candidates: int = 0

    def add(
        self,
        meta: dict[str, Any],
        report: str,
        cands: Sequence[dict[str, Any]],
        rule_sets: dict[str, Sequence[bool]],
    ) -> None:
        """Count one sample: its candidates (with ``kept``), the audit and every rule's ground-truth score."""
        self.samples += 1
        self.candidates += len(cands)
        self.without_candidates += not cands
        iv = measured_intervals(meta)
        for c in cands:
            (self.kept_counts if c["kept"] else self.rejected_counts)[c["text"]] += 1
            self.kept += bool(c["kept"])
            f = c.get("feature")
            if f in INTERVAL_FEATURES:
                truth = interval_truth(f, iv)
                if truth is not None:
                    self.audit[(f, "kept" if c["kept"] else "rejected", truth == bool(c["kept"]))] += 1
        gt = unstated_truth(meta, report)
        if gt is None:
            return
        present, stated = gt
        for label, kept in [("all candidates", [True] * len(cands)), *rule_sets.items()]:
            t = self.truth.setdefault(label, Counter())
            for c, k in zip(cands, kept):
                f = c.get("feature")
                if f is None or f in stated:
                    if label == "all candidates":
                        self.unscorable += f is None
                    continue
                t["pairs"] += 1
                t["present"] += f in present
                if k:
                    t["tp" if f in present else "fp"] += 1

    def truth_table(self) -> list[dict[str, Any]]:
        """Precision and recall (of the present unstated candidates) per rule."""
        rows = []
        for label, t in self.truth.items():
            kept = t["tp"] + t["fp"]
            rows.append(
                {
                    "rule": label,
                    "pairs": t["pairs"],
                    "kept": kept,
                    "precision": round(t["tp"] / kept, 4) if kept else None,
                    "recall": round(t["tp"] / t["present"], 4) if t["present"] else None,
                }
            )
        return rows

    def audit_table(self) -> list[dict[str, Any]]:
        """Per interval feature: kept / rejected pairs and the share agreeing with the measurement."""
        rows = []
        for f in INTERVAL_FEATURES:
            row: dict[str, Any] = {"feature": f}
            for what in ("kept", "rejected"):
                agree, disagree = self.audit[(f, what, True)], self.audit[(f, what, False)]
                row[what] = agree + disagree
                row[f"{what}_agree"] = round(agree / (agree + disagree), 4) if agree + disagree else None
            if row["kept"] or row["rejected"]:
                rows.append(row)
        return rows
