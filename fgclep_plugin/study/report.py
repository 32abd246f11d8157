"""The study's report: every arm against the original-report control, paired by seed and test record.

For an arm ``a`` at mention rate ``p`` the gain is ``mean over seeds s of AUC(a, s) - AUC(original, s)``
(zero-shot macro AUC on the same test records; ``stage1`` has one model, compared with each seed's control).
Its 95 % interval resamples seeds and test records together (a two-level percentile bootstrap: seeds with
replacement, then records with replacement, the same records for the arm and its control). Stage 2 is scored
against the ground truth as ``fgclep augment`` reports it (precision / recall over the candidates the report
did not state). Writes ``results.json``, ``results.md`` and ``gain_vs_mention_rate.png``.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..ecgdata.atomic import atomic_write_bytes, atomic_write_json
from ..evaluate.zeroshot import rank_auc
from .arms import CONTROL, PROMPT_SETS, TASKS, parse_label

MAIN = ("synth-feature", "templates")  # the measure of the table's first block and of the figure


def macro_auc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean ROC AUC over the classes with both outcomes (rank formula, ties averaged)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(rank_auc(scores, targets)))


def load_runs(plan: dict[str, Any]) -> dict[tuple[str, int | None], dict[str, np.ndarray]]:
    """(arm label, seed or None) -> the run's scores file, read without pickle."""
    out = {}
    for label, path in plan["runs"].items():
        arm, seed = parse_label(label)
        with np.load(path, allow_pickle=False) as z:
            out[(arm, seed)] = {k: z[k] for k in z.files}
    return out


def _replicates(groups: list[list[np.ndarray]], targets: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Macro AUCs ``[n, k, G]`` of a two-level bootstrap: per replicate, ``k`` seeds drawn with replacement,
    then the test records with replacement, the same records for every group (paired).

    ``groups[g][s]``: scores ``[N, C]`` of group ``g`` (an arm, its control, ...) and seed ``s``. Replicates
    with a class left without both outcomes (a NaN) are dropped."""
    rng = np.random.default_rng(seed)
    k, nrec, c = len(groups[0]), len(targets), targets.shape[1]
    both = [np.hstack([g[s] for g in groups]) for s in range(k)]  # one rank pass per (replicate, seed)
    tt = np.hstack([targets] * len(groups))
    values = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(n):
            seeds = rng.integers(0, k, k)
            idx = rng.integers(0, nrec, nrec)
            t = tt[idx]
            rep = [np.nanmean(rank_auc(both[s][idx], t).reshape(len(groups), c), axis=1) for s in seeds]
            if np.isfinite(rep).all():
                values.append(rep)
    return np.asarray(values, dtype=np.float64).reshape(-1, k, len(groups))


def _interval(values: np.ndarray) -> tuple[float, float] | None:
    if values.size == 0:
        return None
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def paired_gain(
    arm: list[np.ndarray], control: list[np.ndarray], targets: np.ndarray, n: int, seed: int = 0
) -> tuple[list[float], tuple[float, float] | None]:
    """Per-seed AUC differences (arm - control) and the two-level bootstrap interval of their mean.

    ``arm[s]``, ``control[s]``: scores ``[N, C]`` of seed ``s`` on the same records."""
    diffs = [macro_auc(a, targets) - macro_auc(c, targets) for a, c in zip(arm, control)]
    if n <= 0:
        return diffs, None
    rep = _replicates([arm, control], targets, n, seed)
    return diffs, _interval((rep[:, :, 0] - rep[:, :, 1]).mean(axis=1))


def paired_share(
    arm: list[np.ndarray],
    ceiling: list[np.ndarray],
    control: list[np.ndarray],
    targets: np.ndarray,
    n: int,
    seed: int = 0,
) -> tuple[float, tuple[float, float] | None, float]:
    """The share of the ceiling's gain an arm captures, ``mean_s(arm - control) / mean_s(ceiling - control)``,
    its interval from the same paired two-level bootstrap (seeds and records drawn once for all three), and
    the ceiling's own gain. A share is only read when that gain is positive: with none, there is no ceiling
    to share (NaN, no interval)."""
    auc = np.array([[macro_auc(x[s], targets) for x in (arm, ceiling, control)] for s in range(len(control))])
    top = float((auc[:, 1] - auc[:, 2]).mean())
    if top <= 0:
        return float("nan"), None, top
    share = float((auc[:, 0] - auc[:, 2]).mean()) / top
    if n <= 0:
        return share, None, top
    rep = _replicates([arm, ceiling, control], targets, n, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (rep[:, :, 0] - rep[:, :, 2]).mean(axis=1) / (rep[:, :, 1] - rep[:, :, 2]).mean(axis=1)
    return share, _interval(ratio[np.isfinite(ratio)]), top


def stage2_truth(summary_path: str) -> dict[str, Any]:
    """Kept per report and precision / recall against the truth of the arm's own rule."""
    s = json.loads(Path(summary_path).read_text())
    row = next((g for g in s.get("ground_truth", []) if g["rule"] == s["rule"]), {})
    return {
        "rule": s["rule"],
        "kept_per_report": s["kept_per_report"],
        "precision": row.get("precision"),
        "recall": row.get("recall"),
    }


def ceiling_of(arm: str) -> str | None:
    """The perfect-validation arm with the same injection (``validated-quantile+multi-positive`` ->
    ``perfect-validation+multi-positive``); None for the oracle arms themselves and stage 1."""
    base, _, injection = arm.partition("+")
    if base.startswith("perfect-") or base in ("stage1", CONTROL):
        return None
    return "perfect-validation" + (f"+{injection}" if injection else "")


def analyse(plan: dict[str, Any], seeds: list[int], bootstrap: int) -> dict[str, Any]:
    """Per-run AUCs, every arm's paired gain over the control and stage 2 vs truth at one mention rate."""
    runs = load_runs(plan)
    arms = ["stage1"] + sorted({a for a, s in runs if s is not None and a != CONTROL})
    auc_rows, gains, shares = [], [], []
    for task in TASKS:
        targets = runs[("stage1", None)][f"{task}/targets"].astype(np.float64)
        keys = runs[("stage1", None)][f"{task}/keys"]
        for (a, s), r in runs.items():
            if not np.array_equal(r[f"{task}/keys"], keys):
                raise RuntimeError(f"run {a} seed {s}: other {task} test records than stage 1")
        for ps in PROMPT_SETS:
            control = [runs[(CONTROL, s)][f"{task}/{ps}"] for s in seeds]
            for (a, s), r in sorted(
                runs.items(), key=lambda x: (x[0][0], -1 if x[0][1] is None else x[0][1])
            ):
                auc_rows.append(
                    {
                        "rate": plan["rate"],
                        "arm": a,
                        "seed": s,
                        "task": task,
                        "prompt_set": ps,
                        "auc": macro_auc(r[f"{task}/{ps}"], targets),
                    }
                )
            for a in arms:
                if a != "stage1" and any((a, s) not in runs for s in seeds):
                    continue
                arm = [runs[(a, None if a == "stage1" else s)][f"{task}/{ps}"] for s in seeds]
                diffs, interval = paired_gain(arm, control, targets, bootstrap)
                gains.append(
                    {
                        "rate": plan["rate"],
                        "arm": a,
                        "task": task,
                        "prompt_set": ps,
                        "gain": float(np.mean(diffs)),
                        "per_seed": diffs,
                        "interval": interval,
                    }
                )
                ceiling = ceiling_of(a)
                if ceiling is None or any((ceiling, s) not in runs for s in seeds):
                    continue
                top = [runs[(ceiling, s)][f"{task}/{ps}"] for s in seeds]
                share, interval, top_gain = paired_share(arm, top, control, targets, bootstrap)
                shares.append(
                    {
                        "rate": plan["rate"],
                        "arm": a,
                        "ceiling": ceiling,
                        "task": task,
                        "prompt_set": ps,
                        "share": None if np.isnan(share) else share,
                        "interval": interval,
                        "ceiling_gain": top_gain,
                    }
                )
    stage2 = {arm.split("+")[0]: stage2_truth(p) for arm, p in plan["stage2"].items()}
    return {"aucs": auc_rows, "gains": gains, "shares": shares, "stage2": stage2}


def _cell(g: dict[str, Any] | None) -> str:
    if g is None:
        return "-"
    iv = g["interval"]
    return f"{g['gain']:+.3f}" + (f" [{iv[0]:+.3f}, {iv[1]:+.3f}]" if iv else "")


def format_tables(result: dict[str, Any]) -> str:
    """Markdown: gain tables per (task, prompt set), mean AUC per arm, stage 2 against the truth."""
    rates = sorted({g["rate"] for g in result["gains"]})
    arms = list(dict.fromkeys(g["arm"] for g in result["gains"]))
    head = "| arm | " + " | ".join(f"p = {r:g}" for r in rates) + " |"
    sep = "|---" * (len(rates) + 1) + "|"
    lines = []
    for task in TASKS:
        for ps in PROMPT_SETS:
            lines += [
                f"### {task} zero-shot macro AUC ({ps}): gain over the original-report control",
                "",
                head,
                sep,
            ]
            for a in arms:
                cells = []
                for r in rates:
                    g = next(
                        (
                            x
                            for x in result["gains"]
                            if (x["rate"], x["arm"], x["task"], x["prompt_set"]) == (r, a, task, ps)
                        ),
                        None,
                    )
                    cells.append(_cell(g))
                lines.append(f"| {a} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += [
        "### Mean zero-shot macro AUC over seeds (synth-feature / synth-diagnosis, templates)",
        "",
        head,
        sep,
    ]
    for a in ["original", *arms]:
        cells = []
        for r in rates:
            vals = []
            for task in TASKS:
                v = [
                    x["auc"]
                    for x in result["aucs"]
                    if (x["rate"], x["arm"], x["task"], x["prompt_set"]) == (r, a, task, "templates")
                ]
                vals.append(f"{np.mean(v):.3f}" if v else "-")
            cells.append(" / ".join(vals))
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    shares = result.get("shares", [])
    if shares:
        lines += [
            "",
            f"### Share of the perfect-validation gain ({MAIN[0]}, {MAIN[1]}; same injection, same seeds and records)",
            "",
            head,
            sep,
        ]
        for a in dict.fromkeys(x["arm"] for x in shares):
            cells = []
            for r in rates:
                x = next(
                    (x for x in shares if (x["rate"], x["arm"], x["task"], x["prompt_set"]) == (r, a, *MAIN)),
                    None,
                )
                if x is None:
                    cells.append("-")
                elif x["share"] is None:
                    cells.append(f"no ceiling (its gain {x['ceiling_gain']:+.3f})")
                else:
                    iv = x["interval"]
                    cells.append(f"{x['share']:.0%}" + (f" [{iv[0]:.0%}, {iv[1]:.0%}]" if iv else ""))
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "### Stage 2 against the truth: kept per report, precision / recall (unstated features)",
        "",
        head,
        sep,
    ]
    s2_arms = list(dict.fromkeys(a for r in result["stage2"].values() for a in r))
    for a in s2_arms:
        cells = []
        for r in rates:
            s = result["stage2"].get(f"{r:g}", {}).get(a)
            cells.append(
                "-" if s is None else f"{s['kept_per_report']:.2f}, {s['precision']} / {s['recall']}"
            )
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(result: dict[str, Any], path: Path) -> None:
    """Gain over the control vs mention rate, one line per arm (synth-feature, templates), 95 % intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task, ps = MAIN
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for a in dict.fromkeys(g["arm"] for g in result["gains"]):
        pts = sorted(
            (g["rate"], g["gain"], g["interval"])
            for g in result["gains"]
            if (g["arm"], g["task"], g["prompt_set"]) == (a, task, ps)
        )
        x = [p[0] for p in pts]
        y = [p[1] for p in pts]
        err = np.array([[p[1] - p[2][0], p[2][1] - p[1]] if p[2] else [0, 0] for p in pts]).T
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=a)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("mention rate (probability a report states each present feature)")
    ax.set_ylabel(f"{task} zero-shot AUC ({ps})\nminus original-report control")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def build(out: Path, plans: list[dict[str, Any]], setup: dict[str, Any]) -> dict[str, Any]:
    """Analyse every mention rate; write ``results.json``, ``results.md`` and the figure; return the result."""
    parts = [analyse(p, setup["seeds"], setup["bootstrap"]) for p in plans]
    result = {
        "setup": setup,
        "plans": plans,
        "aucs": [r for p in parts for r in p["aucs"]],
        "gains": [g for p in parts for g in p["gains"]],
        "shares": [x for p in parts for x in p["shares"]],
        "stage2": {f"{p['rate']:g}": part["stage2"] for p, part in zip(plans, parts)},
        "figure": str(out / "gain_vs_mention_rate.png"),
    }
    figure(result, out / "gain_vs_mention_rate.png")
    atomic_write_json(out / "results.json", result)
    md = [
        "# fgclep study",
        "",
        (
            "Gain = stage-3 arm minus the original-report control trained with the same recipe, seed and records "
            "(mean over seeds; 95 % interval over seeds and test records)."
        ),
        "",
        format_tables(result),
        "",
        f"Setup: `{json.dumps(setup)}`",
        "",
    ]
    atomic_write_bytes(out / "results.md", "\n".join(md).encode())
    return result
