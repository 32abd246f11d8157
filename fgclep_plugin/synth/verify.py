"""Independent check of the simulator's ground truth with neurokit2's R-peak detector and delineator.

For every simulated record (noise included), neurokit2 detects R peaks (on whichever of II, I, V5 has the
most upright QRS: lead II is biphasic under left axis deviation) and delineates leads
(``method="prominence"``): PR and QT from II and V5, QRS from II, V5, I and V2; per beat an onset is the
earliest and an offset the latest over those leads (the clinical global-interval convention); a record's value
is the median over its beats.
HR is compared on every record, PR on records with conducted P waves (sinus rhythm), QRS and QT on records
whose rhythm is not paced. Run ``python -m fgclep_plugin.synth.verify --n 300``. neurokit2 is a dev/test
dependency only.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

from .cases import simulate_case
from .geometry import LEAD_INDEX

TOLERANCES = {"hr_bpm": 2.0, "pr_ms": 25.0, "qrs_ms": 25.0, "qt_ms": 40.0}
DELINEATED_LEADS = ("II", "V5")  # PR, QT
QRS_EXTRA_LEADS = ("I", "V2")  # QRS onset/offset: earliest/latest over II, V5, I, V2
R_PEAK_CANDIDATES = ("II", "I", "V5")


def _per_beat(waves: dict, key: str, n: int) -> np.ndarray:
    v = np.asarray(waves.get(key, []), dtype=float)
    return v if len(v) == n else np.full(n, np.nan)


def measure_with_neurokit(signal: np.ndarray, fs: float = 500.0) -> dict[str, float]:
    """HR (bpm) and median global PR, QRS, QT (ms) of a 12-lead signal as neurokit2 measures them."""
    import neurokit2 as nk

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cleaned = {
            name: nk.ecg_clean(signal[LEAD_INDEX[name]].astype(float), sampling_rate=fs)
            for name in dict.fromkeys(DELINEATED_LEADS + QRS_EXTRA_LEADS + R_PEAK_CANDIDATES)
        }
        # R peaks on the candidate lead with the most prominent upward QRS (lead II is biphasic in LAD)
        ref = max(R_PEAK_CANDIDATES, key=lambda n: np.percentile(cleaned[n], 99.5) - np.median(cleaned[n]))
        _, info = nk.ecg_peaks(cleaned[ref], sampling_rate=fs)
        r = np.asarray(info["ECG_R_Peaks"])
        out = {
            "hr_bpm": float(60.0 * fs / np.mean(np.diff(r))) if len(r) > 1 else np.nan,
            "pr_ms": np.nan,
            "qrs_ms": np.nan,
            "qt_ms": np.nan,
        }
        if len(r) < 3:
            return out
        p_on, r_on, r_off, t_off, q_on, q_off = [], [], [], [], [], []
        for name in DELINEATED_LEADS + QRS_EXTRA_LEADS:
            try:
                _, w = nk.ecg_delineate(cleaned[name], r, sampling_rate=fs, method="prominence")
            except (ValueError, IndexError):
                continue
            n = len(r)
            q_on.append(_per_beat(w, "ECG_R_Onsets", n))
            q_off.append(_per_beat(w, "ECG_R_Offsets", n))
            if name in DELINEATED_LEADS:
                p_on.append(_per_beat(w, "ECG_P_Onsets", n))
                r_on.append(q_on[-1])
                r_off.append(q_off[-1])
                t_off.append(_per_beat(w, "ECG_T_Offsets", n))
        if not r_on:
            return out
        ms = 1000.0 / fs
        on = np.nanmin(r_on, 0)
        out["pr_ms"] = float(np.nanmedian(on - np.nanmin(p_on, 0)) * ms)
        out["qrs_ms"] = float(np.nanmedian(np.nanmax(q_off, 0) - np.nanmin(q_on, 0)) * ms)
        out["qt_ms"] = float(np.nanmedian(np.nanmax(t_off, 0) - on) * ms)
    return out


def compare(n: int = 300, seed: int = 12345) -> list[dict]:
    """Generator value vs neurokit2 value per record and quantity (NaN where not applicable)."""
    rows = []
    for i in range(n):
        case = simulate_case([seed, i])
        truth, spec = case["truth"], case["spec"]
        nk_vals = measure_with_neurokit(case["signal"])
        row = {"index": i, "rhythm": spec.rhythm}
        for key in TOLERANCES:
            gen = truth[key]
            applicable = gen is not None and (
                key == "hr_bpm"
                or (key == "pr_ms" and spec.rhythm == "sinus")
                or (key in ("qrs_ms", "qt_ms") and spec.rhythm != "paced")
            )
            row[key] = (float(gen), nk_vals[key]) if applicable else None
        rows.append(row)
    return rows


def agreement_table(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per quantity: records compared, agreement rate within tolerance, mean and mean absolute difference."""
    table = {}
    groups = [(key, key, tol, None) for key, tol in TOLERANCES.items()]
    groups += [
        ("qrs_ms <120", "qrs_ms", TOLERANCES["qrs_ms"], lambda g: g < 120),
        ("qrs_ms >=120", "qrs_ms", TOLERANCES["qrs_ms"], lambda g: g >= 120),
    ]
    for label, key, tol, keep in groups:
        pairs = [r[key] for r in rows if r[key] is not None and (keep is None or keep(r[key][0]))]
        gen = np.array([p[0] for p in pairs])
        meas = np.array([p[1] for p in pairs])
        diff = meas - gen
        ok = np.abs(diff) <= tol  # a failed delineation (NaN) counts as disagreement
        table[label] = {
            "n": len(pairs),
            "tolerance": tol,
            "agree_rate": float(ok.mean()) if len(pairs) else float("nan"),
            "delineated": float(np.isfinite(meas).mean()) if len(pairs) else float("nan"),
            "mean_diff": float(np.nanmean(diff)) if np.isfinite(diff).any() else float("nan"),
            "mae": float(np.nanmean(np.abs(diff))) if np.isfinite(diff).any() else float("nan"),
        }
    return table


def format_table(table: dict[str, dict[str, float]]) -> str:
    """The agreement table as text."""
    lines = [
        (
            f"{'quantity':12s} {'records':>7s} {'tolerance':>10s} {'agree':>7s} {'found':>7s} "
            f"{'bias (nk-gen)':>14s} {'MAE':>7s}"
        )
    ]
    for key, t in table.items():
        unit = "bpm" if key == "hr_bpm" else "ms"
        lines.append(
            f"{key:12s} {t['n']:7d} {'+-' + format(t['tolerance'], 'g') + ' ' + unit:>10s} "
            f"{t['agree_rate']:7.1%} {t['delineated']:7.1%} {t['mean_diff']:14.1f} {t['mae']:7.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the agreement table for ``--n`` simulated records."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300, help="records to simulate and measure")
    ap.add_argument("--seed", type=int, default=12345)
    args = ap.parse_args(argv)
    rows = compare(args.n, args.seed)
    print(
        f"neurokit2 (R peaks on the most upright of {'/'.join(R_PEAK_CANDIDATES)}; 'prominence' delineation, "
        f"PR/QT on {'+'.join(DELINEATED_LEADS)}, QRS on "
        f"{'+'.join(DELINEATED_LEADS + QRS_EXTRA_LEADS)}) vs generator, {args.n} simulated records (with noise)"
    )
    print(format_table(agreement_table(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
