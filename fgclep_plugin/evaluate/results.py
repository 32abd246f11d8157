"""``results.json`` + ``results.md``: one row per (checkpoint, task, protocol, prompt set / fraction), written
atomically; several checkpoints (e.g. CLEP and FG-CLEP) side by side in one table."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..ecgdata.shards import atomic_write_bytes, atomic_write_json


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _interval(row: dict[str, Any]) -> str:
    iv = row.get("interval")
    return "-" if not iv else f"{iv[0]:.3f}-{iv[1]:.3f}"


def _setting(row: dict[str, Any]) -> str:
    if row.get("protocol") == "zero-shot":
        return row["prompt_set"]
    text = f"{row['fraction']:g} %"
    if len(row.get("runs", [])) > 1:
        text += f" ({len(row['runs'])} seeds)"
    return text


def format_markdown(rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The results as Markdown: a summary table, then per-class AUC with positives for every row."""
    lines = [
        "# Evaluation results",
        "",
        (
            f"Written {meta.get('written', '')} by `{meta.get('command', 'fgclep eval')}`. Macro AUC over the "
            "test classes with both outcomes; interval: 95 % bootstrap over test records "
            f"({meta.get('bootstrap', '?')} resamples, seed {meta.get('seed', '?')})."
        ),
        "",
        (
            "| model | checkpoint | task | protocol | prompt set / train fraction | metric | value "
            "| 95 % interval | spread (sd) | test records | classes scored / skipped | selection |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        spread = _fmt(r["std"]) if len(r.get("runs", [])) > 1 else "-"
        lines.append(
            f"| {r['model']} | {r['checkpoint_label']} | {r['task']} | {r['protocol']} | {_setting(r)} "
            f"| {r['metric']} | {_fmt(r['value'])} | {_interval(r)} | {spread} | {r['n_records']} "
            f"| {len(r['per_class']) - len(r['skipped'])} / {len(r['skipped'])} | {r.get('selection', '-')} |"
        )
    merl = [r for r in rows if "inflation" in r]
    if merl:
        lines += ["", "MERL selection (max test AUC over epochs) vs the same run selected on validation:", ""]
        lines += [
            "| checkpoint | task | fraction | MERL selection | val-selected | inflation |",
            "|---|---|---|---|---|---|",
        ]
        for r in merl:
            lines.append(
                f"| {r['checkpoint_label']} | {r['task']} | {r['fraction']:g} % | {_fmt(r['value'])} "
                f"| {_fmt(r['val_selected_value'])} | {r['inflation']:+.3f} |"
            )
    lines += ["", "## Per class (AUC, positives in the test split)", ""]
    for r in rows:
        lines.append(f"**{r['checkpoint_label']} / {r['task']} / {r['protocol']} / {_setting(r)}**")
        lines.append("")
        cells = [f"{c} {_fmt(v['auc'], 2)} ({v['positives']})" for c, v in r["per_class"].items()]
        lines.append("; ".join(cells) + ".")
        if r["skipped"]:
            lines.append(f"Skipped (one outcome in test): {', '.join(r['skipped'])}.")
        lines.append("")
    return "\n".join(lines)


def write_results(
    out_dir: str | Path, rows: Sequence[dict[str, Any]], meta: dict[str, Any]
) -> dict[str, str]:
    """Write ``out_dir/results.json`` (``{"meta", "rows"}``) and ``out_dir/results.md`` atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"written": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), **meta}
    atomic_write_json(out / "results.json", {"meta": meta, "rows": list(rows)})
    atomic_write_bytes(out / "results.md", (format_markdown(rows, meta) + "\n").encode())
    return {"json": str(out / "results.json"), "md": str(out / "results.md")}
