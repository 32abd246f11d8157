"""Linear probe on frozen ECG embeddings: a linear head with BCE, selected on validation, test scored once.

The encoder is never run during probing: each split is embedded once (:func:`.zeroshot.cached_split`, cached
by checkpoint hash + task + split). Protocol (the default): a zero-initialised head, Adam (lr 1e-3), batch 16, up to 100 epochs, BCE;
weight decay from :data:`WEIGHT_DECAYS` and the epoch both chosen by the **validation** macro AUC; the test
split is scored once, with the chosen head. Training fractions 1 / 10 / 100 % are random subsets of the
training records, seeded; fractions below 100 % are repeated with seeds 0..R-1 (mean and spread reported).

``merl_selection=True`` reproduces MERL's ``finetune/main_single.py`` instead: PyTorch's random head
initialisation, Adam lr 1e-3, weight decay 1e-4,
batch 16, 100 epochs, its learning-rate milestone (``MultiStepLR([40], 0.1)``) stepped every iteration and once
per epoch, fractions from ``train_test_split(train_size=r/100, random_state=42)`` (one seed), and the reported
number is the **maximum test AUC over epochs**: selection on test. Every output row says so. The same run's
validation-selected test AUC is reported beside it, which measures the inflation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from ..model.scoring import one_thread
from ..model.zeroshot import macro_auc, rank_auc
from .zeroshot import EmbeddedSplit, auc_summary

WEIGHT_DECAYS = (0.0, 1e-4, 1e-3, 1e-2)
FRACTIONS = (1.0, 10.0, 100.0)
MERL_SELECTION = "MERL selection: maximum TEST AUC over epochs (selected on test; inflated)"
VAL_SELECTION = "weight decay and epoch selected on validation; test scored once"


@dataclass(frozen=True)
class ProbeConfig:
    """Optimiser settings of one head training run."""

    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 16
    epochs: int = 100
    merl_schedule: bool = False  # MERL's MultiStepLR([40], 0.1) stepped per iteration and per epoch
    zero_init: bool = True  # head starts at 0 (MERL: PyTorch's random init); random init is noise to undo


def macro(auc: np.ndarray) -> float:
    """Mean of the finite per-class AUCs (``nan`` if none)."""
    finite = auc[np.isfinite(auc)]
    return float(finite.mean()) if len(finite) else float("nan")


def train_head(
    x: np.ndarray,
    y: np.ndarray,
    monitor: dict[str, tuple[np.ndarray, np.ndarray]],
    config: ProbeConfig,
    seed: int,
) -> tuple[dict[str, list[float]], list[tuple[np.ndarray, np.ndarray]]]:
    """Train a linear head on ``(x, y)``; after every epoch record the macro AUC on each ``monitor`` set and
    the head's weights. Returns ``({set name: [auc per epoch]}, [(weight, bias) per epoch])``.

    Runs on one thread: for a head this small, thread hand-offs cost more than the arithmetic (12x slower
    on 2 busy cores)."""
    with one_thread():
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        head = torch.nn.Linear(x.shape[1], y.shape[1])
        if config.zero_init:
            torch.nn.init.zeros_(head.weight)
            torch.nn.init.zeros_(head.bias)
        opt = torch.optim.Adam(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        sched = (
            torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[40], gamma=0.1)
            if config.merl_schedule
            else None
        )
        loss_fn = torch.nn.BCEWithLogitsLoss()
        xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y).float()
        history: dict[str, list[float]] = {name: [] for name in monitor}
        states = []
        for _ in range(config.epochs):
            head.train()
            for idx in torch.randperm(len(xt), generator=g).split(config.batch_size):
                opt.zero_grad()
                loss_fn(head(xt[idx]), yt[idx]).backward()
                opt.step()
                if sched is not None:
                    sched.step()
            if sched is not None:
                sched.step()
            w, b = head.weight.detach().numpy().copy(), head.bias.detach().numpy().copy()
            states.append((w, b))
            for name, (mx, my) in monitor.items():
                history[name].append(macro(rank_auc(mx @ w.T + b, my)))
        return history, states


def subset(n: int, fraction: float, seed: int, merl: bool) -> np.ndarray:
    """Indices of a ``fraction`` % training subset: seeded random (ours) or MERL's ``train_test_split``."""
    if fraction >= 100:
        return np.arange(n)
    if merl:
        return np.sort(train_test_split(np.arange(n), train_size=fraction / 100, random_state=42)[0])
    k = max(1, math.ceil(n * fraction / 100))
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def probe_fraction(
    train: EmbeddedSplit,
    val: EmbeddedSplit,
    test: EmbeddedSplit,
    fraction: float,
    repeats: int = 5,
    merl_selection: bool = False,
    epochs: int = 100,
    weight_decays: Sequence[float] = WEIGHT_DECAYS,
    bootstrap: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Linear-probe result at one training fraction (see the module doc for both selection rules)."""
    n_rep = 1 if (merl_selection or fraction >= 100) else repeats
    runs, test_scores, val_selected_scores = [], [], []
    grid = [1e-4] if merl_selection else list(weight_decays)
    bar = tqdm(total=n_rep * len(grid), desc=f"linear {fraction:g}%", unit="run", disable=not progress)
    for rep in range(n_rep):
        idx = subset(len(train.targets), fraction, seed + rep, merl_selection)
        x, y = train.embeddings[idx], train.targets[idx]
        best = None
        for wd in grid:
            config = ProbeConfig(
                weight_decay=wd, epochs=epochs, merl_schedule=merl_selection, zero_init=not merl_selection
            )
            monitor = {"val": (val.embeddings, val.targets)}
            if merl_selection:
                monitor["test"] = (test.embeddings, test.targets)  # MERL evaluates test every epoch
            history, states = train_head(x, y, monitor, config, seed + rep)
            bar.update(1)
            val_curve = np.nan_to_num(history["val"], nan=-1.0)
            epoch = int(np.argmax(val_curve))
            if best is None or val_curve[epoch] > best["val_auc"]:
                best = {"weight_decay": wd, "epoch": epoch + 1, "val_auc": float(val_curve[epoch])}
                best_state, best_history, best_states = states[epoch], history, states
        run = {"seed": seed + rep, "n_train": len(idx), "positives_train": int(y.sum()), **best}
        w, b = best_state
        val_selected = test.embeddings @ w.T + b
        if merl_selection:
            test_curve = np.nan_to_num(best_history["test"], nan=-1.0)
            merl_epoch = int(np.argmax(test_curve))
            w, b = best_states[merl_epoch]
            run.update(merl_epoch=merl_epoch + 1, merl_test_auc=float(test_curve[merl_epoch]))
            val_selected_scores.append(val_selected)
            test_scores.append(test.embeddings @ w.T + b)
        else:
            test_scores.append(val_selected)  # the one time the test split is scored
        runs.append(run)
    bar.close()
    summary = auc_summary(test_scores, test.targets, test.class_names, bootstrap, seed)
    values = [macro_of(s, test) for s in test_scores]
    out = {
        "protocol": "linear probe",
        "fraction": fraction,
        "selection": MERL_SELECTION if merl_selection else VAL_SELECTION,
        "metric": "macro AUC" + (" (MERL selection)" if merl_selection else ""),
        **summary,
        "std": float(np.std(values)),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
        "runs": runs,
        "n_train_total": len(train.targets),
        "n_val": len(val.targets),
    }
    if merl_selection:
        out["val_selected_value"] = float(np.mean([macro_of(s, test) for s in val_selected_scores]))
        out["inflation"] = out["value"] - out["val_selected_value"]
    return out


def macro_of(scores: np.ndarray, split: EmbeddedSplit) -> float:
    """Macro AUC (scikit-learn) of ``scores`` on ``split`` over the classes with both outcomes."""
    return macro_auc(scores, split.targets, split.class_names)["auc"]


def linear_probe(
    train: EmbeddedSplit,
    val: EmbeddedSplit,
    test: EmbeddedSplit,
    fractions: Sequence[float] = FRACTIONS,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """:func:`probe_fraction` at every fraction (one result row each)."""
    return [probe_fraction(train, val, test, f, **kwargs) for f in fractions]
