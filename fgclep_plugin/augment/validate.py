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

The audit compares kept interval features (slow / fast rate, long PR, wide QRS, long QT, axis deviation) with
the intervals a sample carries (synthetic ground truth; MIMIC-IV-ECG machine measurements), and on synthetic
samples kept features are scored against the ground truth over the features the report did not state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..model.scoring import LoadedModel, embed_ecgs, embed_texts, pair_cosines, pair_probability
from . import knowledge

RULES = ("quantile", "cosine", "paper", "oracle")  # oracle: ground truth (augment/oracle.py)
DEFAULT_RULE = "quantile"
PAPER_THRESHOLD = 0.95
COSINE_THRESHOLD = 0.3
QUANTILE = 0.9
CALIB_SIZE = 2000
MIN_REFERENCE = 20  # fewer reference ECGs than this: the candidate's threshold uses every reference ECG


@dataclass
class RuleConfig:
    """A decision rule and its parameters."""

    rule: str = DEFAULT_RULE
    paper_threshold: float = PAPER_THRESHOLD
    cosine_threshold: float = COSINE_THRESHOLD
    quantile: float = QUANTILE

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"unknown decision rule {self.rule!r}; expected one of {RULES}")
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
        return f"quantile q={self.quantile:g}"


def decide(
    cos: np.ndarray,
    prob: np.ndarray,
    threshold: np.ndarray | None,
    cfg: RuleConfig,
    truth: np.ndarray | None = None,
) -> np.ndarray:
    """Keep (bool) per pair under ``cfg``; ``threshold`` is each pair's calibrated cosine threshold, ``truth``
    whether each pair's feature is present (the oracle rule keeps exactly those)."""
    if cfg.rule == "oracle":
        if truth is None:
            raise ValueError("the oracle rule needs the ground truth of every candidate")
        return np.asarray(truth, dtype=bool)
    if cfg.rule == "paper":
        return np.asarray(prob) > cfg.paper_threshold
    if cfg.rule == "cosine":
        return np.asarray(cos) > cfg.cosine_threshold
    if threshold is None:
        raise ValueError("the quantile rule needs calibrated thresholds")
    thr = np.asarray(threshold, dtype=np.float64)
    return np.asarray(cos) > np.where(np.isnan(thr), np.inf, thr)


class TextTable:
    """Embeddings of candidate texts, each distinct text encoded once over the whole run."""

    def __init__(self, lm: LoadedModel, batch_size: int = 256):
        self.lm, self.batch_size = lm, batch_size
        self.index: dict[str, int] = {}
        self.emb = torch.zeros(0, 0)

    def rows(self, texts: Sequence[str]) -> list[int]:
        """Row of every text, embedding the ones not seen before (one batched pass)."""
        new = [t for t in dict.fromkeys(texts) if t not in self.index]
        if new:
            e = embed_texts(
                self.lm.model, self.lm.tokenizer, new, batch_size=self.batch_size, device=self.lm.device
            )
            self.emb = e if self.emb.numel() == 0 else torch.cat([self.emb, e])
            for t in new:
                self.index[t] = len(self.index)
        return [self.index[t] for t in texts]


def ecg_embeddings(lm: LoadedModel, xs: Sequence[torch.Tensor], batch_size: int = 64) -> torch.Tensor:
    """Normalised embeddings ``[N, D]`` of ECGs already passed through the model's eval transform, batched."""
    if not len(xs):
        return torch.zeros(0, 0)
    chunks = (torch.stack(list(xs[i : i + batch_size])) for i in range(0, len(xs), batch_size))
    return embed_ecgs(lm.model, chunks, device=lm.device)


@dataclass
class PairScores:
    """Scores of the pairs of one batch of ECGs: flat arrays over (ECG, candidate) pairs."""

    ecg_index: np.ndarray
    text_rows: np.ndarray
    cos: np.ndarray
    prob: np.ndarray


def score_pairs(
    lm: LoadedModel, ecg_emb: torch.Tensor, candidates: Sequence[Sequence[str]], texts: TextTable
) -> PairScores:
    """Cosine and probability of every (ECG i, candidate of i) pair, in one gather."""
    ecg_index = [i for i, cands in enumerate(candidates) for _ in cands]
    flat = [c for cands in candidates for c in cands]
    rows = texts.rows(flat)
    if not flat:
        empty = np.zeros(0)
        return PairScores(empty.astype(int), empty.astype(int), empty, empty)
    cos = pair_cosines(ecg_emb, texts.emb, ecg_index, rows)
    prob = pair_probability(cos, lm.logit_scale, lm.logit_bias)
    return PairScores(np.asarray(ecg_index), np.asarray(rows), cos.numpy(), prob.numpy())


def calibrate(
    ecg_emb: torch.Tensor,
    proposed: Sequence[Sequence[str]],
    texts: TextTable,
    candidate_texts: Sequence[str],
    qs: Sequence[float],
    min_reference: int = MIN_REFERENCE,
) -> dict[str, dict[float, float]]:
    """Per-candidate cosine thresholds: for each ``q`` in ``qs`` the ``q`` quantile of the candidate's cosines
    over the reference ECGs whose own candidate list does not contain it (all reference ECGs if fewer than
    ``min_reference`` qualify)."""
    cand = list(dict.fromkeys(candidate_texts))
    if not cand or ecg_emb.numel() == 0:
        return {}
    rows = texts.rows(cand)
    sim = (ecg_emb @ texts.emb[torch.as_tensor(rows)].T).numpy()  # [N_ref, M]
    sets = [set(p) for p in proposed]
    out = {}
    for j, c in enumerate(cand):
        ref = np.array([c not in s for s in sets])
        values = sim[ref, j] if ref.sum() >= min_reference else sim[:, j]
        out[c] = {float(q): float(np.quantile(values, q)) for q in qs}
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
            e = embed_ecgs(lm.model, [lm.preprocess(x)[None]], device=lm.device)
            t = embed_texts(lm.model, lm.tokenizer, [c], device=lm.device)
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
