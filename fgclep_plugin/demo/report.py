"""The demo's report: one table (a line per measure, a column per model), the stage-1 learning curve, and
``results.md`` / ``results.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..ecgdata.atomic import atomic_write_bytes, atomic_write_json
from ..evaluate.results import format_markdown
from .config import COLUMNS, PROBE_TASKS, ZS_TASKS


def _find(rows: list[dict], label: str, task: str, **kw: Any) -> dict | None:
    for r in rows:
        if r["checkpoint_label"] == label and r["task"] == task and all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def demo_table(rows: list[dict], summaries: dict[str, dict]) -> list[dict[str, Any]]:
    """One line per measure, one value per column (CLEP = stage 1; the others stage 3 on each data)."""
    out = []
    for task in ZS_TASKS:
        for ps in ("templates", "ens"):
            line = {"measure": f"{task} zero-shot macro AUC ({ps})"}
            for c in COLUMNS:
                r = _find(rows, c, task, protocol="zero-shot", prompt_set=ps)
                line[c] = None if r is None else {"value": r["value"], "interval": r.get("interval")}
            out.append(line)
    for task in PROBE_TASKS:
        for frac in (1.0, 100.0):
            line = {"measure": f"{task} linear probe macro AUC ({frac:g} % labels)"}
            for c in COLUMNS:
                r = _find(rows, c, task, protocol="linear probe", fraction=frac)
                line[c] = None if r is None else {"value": r["value"], "interval": r.get("interval")}
            out.append(line)
    for what in ("kept_per_report", "precision", "recall"):
        line = {"measure": f"stage-2 features: {what.replace('_', ' ')} (ground truth)"}
        for c, kind in (
            ("FG-CLEP", "validated"),
            ("unvalidated", "unvalidated"),
            ("perfect validation", "perfect-validation"),
        ):
            s = summaries.get(kind)
            if s is None:
                continue
            if what == "kept_per_report":
                line[c] = {"value": s["kept_per_report"]}
            else:
                gt = next((g for g in s.get("ground_truth", []) if g["rule"] == s["rule"]), None)
                line[c] = None if gt is None or gt[what] is None else {"value": gt[what]}
        out.append(line)
    return out


def _cell(v: dict | None) -> str:
    if not v:
        return "-"
    iv = v.get("interval")
    if iv and iv[0] is not None:
        return f"{v['value']:.3f} [{iv[0]:.3f}, {iv[1]:.3f}]"
    return f"{v['value']:.3f}"


def format_table(table: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`demo_table`."""
    lines = ["| measure | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for line in table:
        lines.append(f"| {line['measure']} | " + " | ".join(_cell(line.get(c)) for c in COLUMNS) + " |")
    return "\n".join(lines)


def format_curve(rows: list[dict]) -> str:
    """The stage-1 learning curve as a fixed-width text table (epoch 0 = the untrained model)."""
    lines = ["epoch   train loss (SigLIP + FNM)        zero-shot AUC"]
    for r in rows:
        loss = (
            "        -"
            if r.get("loss") is None
            else (f"{r['loss']:9.4f} ({r['siglip']:.4f} + {r['fnm']:.4f})")
        )
        lines.append(f"{r['epoch']:5d}   {loss:<30s}   {r['auc']:.4f}")
    return "\n".join(lines)


def write_report(
    out: Path,
    rows: list[dict[str, Any]],
    summaries: dict[str, dict],
    curve: list[dict],
    ckpts: dict[str, Path],
    meta: dict[str, Any],
) -> None:
    """``OUT/results.md`` (table, curve, every evaluation row) and ``OUT/results.json``, written atomically."""
    table = demo_table(rows, summaries)
    md = [
        "# fgclep demo",
        "",
        (
            "CLEP = stage 1; FG-CLEP = stage 3 on validated features; unvalidated / original = stage 3 for the "
            "same epochs on every proposed feature / on the original reports (controls); perfect validation = "
            "stage 3 on the proposed features that are truly present (the ceiling of any validation rule)."
        )
        + (
            f" FG-CLEP, unvalidated and perfect validation train on their features with "
            f"`--ecg-feature-injection {meta['stage3_injection']}`."
            if meta.get("stage3_injection")
            else ""
        ),
        "",
        format_table(table),
        "",
        "## Stage-1 learning curve",
        "",
        "```",
        format_curve(curve),
        "```",
        "",
        format_markdown(rows, meta),
    ]
    atomic_write_bytes(out / "results.md", ("\n".join(md) + "\n").encode())
    aug = {
        k: {
            "ground_truth": s["ground_truth"],
            "kept_per_report": s["kept_per_report"],
            "rule": s["rule"],
            "urls": s["urls"],
        }
        for k, s in summaries.items()
    }
    atomic_write_json(
        out / "results.json",
        {
            "meta": meta,
            "table": table,
            "curve": curve,
            "augment": aug,
            "checkpoints": {k: str(v) for k, v in ckpts.items()},
            "rows": rows,
        },
    )
