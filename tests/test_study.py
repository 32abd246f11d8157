"""``fgclep study --fast``: the whole grid at toy size (two mention rates, two seeds, the perfect-features arm
appended and as extra positives), then the report checked against an independent recomputation from the
per-run score files, the figure, and a resume that runs nothing again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fgclep_plugin.cli import main

ARMS = {"stage1", "perfect-features", "perfect-features+multi-positive"}


def _macro_auc(scores: np.ndarray, targets: np.ndarray) -> float:
    aucs = [
        roc_auc_score(targets[:, c], scores[:, c])
        for c in range(targets.shape[1])
        if 0 < targets[:, c].sum() < len(targets)
    ]
    return float(np.mean(aucs))


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("study") / "s"
    assert main(["study", "--fast", "--out", str(out)]) == 0
    return out


def test_table_arms_and_files(study: Path):
    result = json.loads((study / "results.json").read_text())
    for rate in (0.3, 0.6):
        for task in ("synth-feature", "synth-diagnosis"):
            for ps in ("templates", "ens"):
                arms = {
                    g["arm"]
                    for g in result["gains"]
                    if (g["rate"], g["task"], g["prompt_set"]) == (rate, task, ps)
                }
                assert arms == ARMS, (rate, task, ps)
    assert set(result["stage2"]) == {"0.3", "0.6"}
    for s2 in result["stage2"].values():  # the oracle's perfect features: every kept one is present
        assert s2["perfect-features"]["precision"] == pytest.approx(1.0)
    md = (study / "results.md").read_text()
    assert "gain over the original-report control" in md and "| perfect-features+multi-positive |" in md
    png = (study / "gain_vs_mention_rate.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    log = (study / "commands.log").read_text().splitlines()
    assert sum(line.startswith("python -m fgclep_plugin.train") for line in log) == 2 * (1 + 2 * 3)
    assert any("--ecg-feature-injection multi-positive" in line for line in log)


def test_paired_differences_recomputed(study: Path):
    result = json.loads((study / "results.json").read_text())
    for plan in result["plans"]:
        z = {label: np.load(path, allow_pickle=False) for label, path in plan["runs"].items()}
        for task in ("synth-feature", "synth-diagnosis"):
            for ps in ("templates", "ens"):
                targets = z["stage1"][f"{task}/targets"]
                for arm in ARMS:
                    per_seed = []
                    for seed in (0, 1):
                        control = _macro_auc(z[f"original@s{seed}"][f"{task}/{ps}"], targets)
                        label = "stage1" if arm == "stage1" else f"{arm}@s{seed}"
                        # the same test records in the same order in every run
                        assert (z[label][f"{task}/keys"] == z["stage1"][f"{task}/keys"]).all()
                        per_seed.append(_macro_auc(z[label][f"{task}/{ps}"], targets) - control)
                    g = next(
                        g
                        for g in result["gains"]
                        if (g["rate"], g["arm"], g["task"], g["prompt_set"]) == (plan["rate"], arm, task, ps)
                    )
                    assert g["per_seed"] == pytest.approx(per_seed, abs=1e-9)
                    assert g["gain"] == pytest.approx(np.mean(per_seed), abs=1e-9)
                    lo, hi = g["interval"]
                    assert -1 <= lo <= hi <= 1


def test_resume_runs_nothing(study: Path, capsys):
    assert main(["study", "--fast", "--out", str(study)]) == 0
    result = json.loads((study / "results.json").read_text())
    assert result["setup"]["steps_run_now"] == []
    assert "running" not in capsys.readouterr().out


def _toy_scores(rng: np.random.Generator, targets: np.ndarray, signal: float) -> np.ndarray:
    return signal * targets + rng.normal(size=targets.shape)


def test_share_of_the_ceiling_recomputed():
    """paired_share against sklearn: the ratio of mean paired gains; its interval brackets the point, and a
    ceiling without a gain gives no share."""
    from fgclep_plugin.study.report import paired_gain, paired_share

    rng = np.random.default_rng(0)
    targets = (rng.random((300, 4)) < 0.3).astype(np.float64)
    control = [_toy_scores(rng, targets, 0.5) for _ in range(3)]
    arm = [_toy_scores(rng, targets, 1.0) for _ in range(3)]
    top = [_toy_scores(rng, targets, 2.0) for _ in range(3)]
    gain = np.mean([_macro_auc(a, targets) - _macro_auc(c, targets) for a, c in zip(arm, control)])
    ceiling = np.mean([_macro_auc(t, targets) - _macro_auc(c, targets) for t, c in zip(top, control)])
    share, interval, top_gain = paired_share(arm, top, control, targets, 200)
    assert top_gain == pytest.approx(ceiling, abs=1e-9)
    assert share == pytest.approx(gain / ceiling, abs=1e-9)
    assert 0 < share < 1 and interval[0] < share < interval[1]
    # the gain's interval comes from the same draws: the arm's own gain is inside it
    diffs, giv = paired_gain(arm, control, targets, 200)
    assert giv[0] < np.mean(diffs) < giv[1]
    share, interval, top_gain = paired_share(arm, control, top, targets, 200)  # "ceiling" worse than control
    assert np.isnan(share) and interval is None and top_gain < 0
