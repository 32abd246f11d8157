"""Figure: synthetic normal ECGs vs LUDB's annotated normal records, plus one real and one synthetic ECG.

``python -m fgclep_plugin.synth.figures --out docs/`` writes ``synth_vs_ludb.png`` (interval distributions,
per-lead amplitudes, a real LUDB 12-lead and a synthetic 12-lead on clinical paper), prints the range table,
and writes ``synth_examples.png`` (one synthetic ECG per abnormal diagnosis, with its report and features).
LUDB data: Kalyakulina et al. 2020, ODC-By 1.0.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..ecgdata.plot import paper_size_mm, plot_ecg12
from .cases import simulate_case
from .geometry import LEAD_NAMES
from .ludb import measure_normals, normal_record_ids
from .realism import INTERVALS, compare_ranges, format_rows, synthetic_normals

LUDB_DEFAULT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ludb"
LABELS = {"hr_bpm": "heart rate (bpm)", "pr_ms": "PR (ms)", "qrs_ms": "QRS duration (ms)", "qt_ms": "QT (ms)"}
SYNTH_COLOR, LUDB_COLOR = "#1f77b4", "#d62728"


def _ludb_signal(root: Path, rec_id: str) -> tuple[np.ndarray, list[str]]:
    from ..ecgdata.sources.ludb import LudbSource

    rec = LudbSource(root).load(rec_id)  # the converter's reading: one common gain for all leads
    return rec.signal, list(rec.lead_names)


def _first_normal_case(seed: int) -> tuple[np.ndarray, str]:
    from .cases import ecg_class
    from .reports import make_report

    for i in range(1000):
        case = simulate_case([seed, i])
        if "normal_ecg" in case["diagnoses"] and case["spec"].noise.muscle_mv > 0:
            report, _ = make_report(
                case["diagnoses"], case["features"], ecg_class(case["diagnoses"]), np.random.default_rng(i)
            )
            t = case["truth"]
            desc = (
                f'synthetic #{i}: "{report}"  HR {t["hr_bpm"]:.0f} bpm, PR {t["pr_ms"]:.0f} ms, '
                f"QRS {t['qrs_ms']:.0f} ms, QT {t['qt_ms']:.0f} ms, axis {t['qrs_axis_deg']:.0f} deg"
            )
            return case["signal"], desc
    raise RuntimeError("no normal synthetic case found")


def make_figure(
    out_dir: str | Path, ludb_root: str | Path = LUDB_DEFAULT, n_cases: int = 600, seed: int = 2024
) -> tuple[Path, str]:
    """Write ``synth_vs_ludb.png`` into ``out_dir``; returns (path, range table text)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ludb_root = Path(ludb_root)
    ludb = measure_normals(ludb_root)
    synth = synthetic_normals(n_cases, seed)
    rows = compare_ranges(synth, ludb)

    w_mm, h_mm = paper_size_mm()
    ecg_h = 17.0 * h_mm / w_mm  # inches of one full-width ECG on equal-aspect paper
    fig = plt.figure(figsize=(17.0, 7.0 + 2 * ecg_h))
    gs = fig.add_gridspec(
        4,
        4,
        height_ratios=[3.0, 3.4, ecg_h, ecg_h],
        hspace=0.28,
        wspace=0.25,
        top=0.965,
        bottom=0.01,
        left=0.04,
        right=0.99,
    )
    for k, key in enumerate(INTERVALS):
        ax = fig.add_subplot(gs[0, k])
        lu = np.array([r[key] for r in ludb], dtype=float)
        sy = np.array([r[key] for r in synth], dtype=float)
        lo, hi = min(lu.min(), sy.min()), max(lu.max(), sy.max())
        bins = np.linspace(lo, hi, 25)
        ax.hist(
            sy, bins=bins, density=True, alpha=0.5, color=SYNTH_COLOR, label=f"synthetic normal (n={len(sy)})"
        )
        ax.hist(lu, bins=bins, density=True, alpha=0.5, color=LUDB_COLOR, label=f"LUDB normal (n={len(lu)})")
        ax.set_xlabel(LABELS[key])
        ax.set_yticks([])
        if k == 0:
            ax.legend(fontsize=8, loc="upper right")
    panels = (
        (gs[1, :2], ("r_mv", "s_mv"), "QRS amplitudes: R (above 0) and S (below 0), mV"),
        (gs[1, 2:], ("t_mv",), "T amplitude (mV)"),
    )
    for k, (cell, keys, name) in enumerate(panels):
        ax = fig.add_subplot(cell)
        x = np.arange(len(LEAD_NAMES))
        for key in keys:
            for off, data, color, label in (
                (-0.17, ludb, LUDB_COLOR, "LUDB normal"),
                (0.17, synth, SYNTH_COLOR, "synthetic normal"),
            ):
                vals = [np.array([r[key][n] for r in data], dtype=float) for n in LEAD_NAMES]
                q = np.array([np.nanpercentile(v, [10, 50, 90]) for v in vals])
                ax.errorbar(
                    x + off,
                    q[:, 1],
                    yerr=[q[:, 1] - q[:, 0], q[:, 2] - q[:, 1]],
                    fmt="o",
                    ms=4,
                    color=color,
                    capsize=2,
                    label=f"{label} (median, 10-90 %)" if key == keys[0] else None,
                )
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.set_xticks(x, LEAD_NAMES, fontsize=9)
        ax.set_title(name, fontsize=10)
        if k == 0:
            ax.legend(fontsize=8, loc="upper left")

    rec_id = normal_record_ids(ludb_root)[0]
    sig, names = _ludb_signal(ludb_root, rec_id)
    ax = fig.add_subplot(gs[2, :])
    plot_ecg12(sig, 500.0, names, ax=ax, title=f"real: LUDB record {rec_id} (sinus rhythm, no findings)")
    ssig, desc = _first_normal_case(seed)
    ax = fig.add_subplot(gs[3, :])
    plot_ecg12(ssig, 500.0, LEAD_NAMES, ax=ax, title=desc)
    n_ok = sum(r["ok"] for r in rows)
    fig.suptitle(
        f"Synthetic normal ECGs vs LUDB annotated normal records: {n_ok}/{len(rows)} quantities "
        "within LUDB's range",
        fontsize=13,
        y=0.985,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "synth_vs_ludb.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path, format_rows(rows)


GALLERY = (
    "lbbb",
    "rbbb",
    "atrial_fibrillation",
    "atrial_flutter",
    "inferior_mi_acute",
    "anterior_mi_old",
    "lvh",
    "paced_rhythm",
    "pvcs",
    "first_degree_av_block",
)


def make_gallery(
    out_dir: str | Path, diagnoses: tuple[str, ...] = GALLERY, seed: int = 31, max_cases: int = 5000
) -> Path:
    """Write ``synth_examples.png``: one synthetic ECG per diagnosis, titled with its report and features."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .cases import ecg_class
    from .reports import make_report

    found: dict[str, dict] = {}
    for i in range(max_cases):
        case = simulate_case([seed, i])
        for d in diagnoses:
            if d not in found and d in case["diagnoses"] and len(case["diagnoses"]) <= 3:
                found[d] = case
                break  # one panel per case
        if len(found) == len(diagnoses):
            break
    w_mm, h_mm = paper_size_mm()
    cols = 2
    rows = -(-len(found) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2 * 9.0, rows * 9.0 * h_mm / w_mm + rows * 0.5))
    for ax, d in zip(np.ravel(axes), [d for d in diagnoses if d in found]):
        case = found[d]
        report, _ = make_report(
            case["diagnoses"],
            case["features"],
            ecg_class(case["diagnoses"]),
            np.random.default_rng(0),
            p_mention=0.0,
        )
        plot_ecg12(case["signal"], 500.0, LEAD_NAMES, ax=ax, title=f'"{report}"')
        feats = ", ".join(f for f in case["features"] if f != "sinus_p")
        ax.text(0.0, -0.02, f"features: {feats}", transform=ax.transAxes, fontsize=7, va="top", wrap=True)
    for ax in np.ravel(axes)[len(found) :]:
        ax.axis("off")
    fig.tight_layout()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "synth_examples.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """Write the figure and print the range table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs", help="output folder")
    ap.add_argument("--ludb", default=str(LUDB_DEFAULT), help="LUDB folder (with ludb.csv and data/)")
    ap.add_argument("--cases", type=int, default=600, help="synthetic cases to draw normals from")
    args = ap.parse_args(argv)
    path, table = make_figure(args.out, args.ludb, args.cases)
    print(table)
    print(f"wrote {path}")
    print(f"wrote {make_gallery(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
