"""Stage-2 decision rules and the run's summary counts: what deciding from stored scores needs, without torch.

The rules, their scores and thresholds are described in :mod:`fgclep_plugin.augment.validate` (which computes the
scores with the stage-1 model and re-exports every name here). This module loads neither torch nor a model: the
``fgclep augment`` parser offers its choices and defaults from here, and a summary of written shards is
recomputed from their stored scores (start-up time).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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


QUANTILES = (0.8, 0.9, 0.95, 0.98)  # calibrated thresholds stored for each, so summaries can compare them
# Rules compared in every summary (the chosen one is added): decisions recomputed from the stored scores.
COMPARED = (
    RuleConfig("paper", paper_threshold=PAPER_THRESHOLD),
    RuleConfig("cosine", cosine_threshold=0.2),
    RuleConfig("cosine", cosine_threshold=COSINE_THRESHOLD),
    RuleConfig("cosine", cosine_threshold=0.4),
    *(RuleConfig("quantile", quantile=q) for q in QUANTILES),
    *(RuleConfig(r) for r in ("within-proposer", "lead-ensemble", "centred")),
)


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
