"""Synthetic normal ECGs against LUDB's annotated normal records: intervals and lead amplitudes.

The rule (used by the test and printed by the figure command): for every quantity, the synthetic normals'
median lies inside LUDB's 10-90 % range, and their 10-90 % range lies inside LUDB's [min, max] widened by
10 % of that range on each side. Amplitudes (R, S, T per lead) use the same rule with LUDB's 5-95 % range
widened by 0.1 mV for the synthetic median alone (23 LUDB records make the tails of 12 x 3 distributions
uncertain). R is the largest, S the most negative QRS deflection from the baseline before QRS onset, T the
T-wave peak.
"""

from __future__ import annotations

import numpy as np

from .cases import simulate_case
from .geometry import LEAD_NAMES

INTERVALS = ("hr_bpm", "pr_ms", "qrs_ms", "qt_ms")
AMPLITUDES = ("r_mv", "s_mv", "t_mv")


def synthetic_normals(n_cases: int = 600, seed: int = 2024) -> list[dict]:
    """Ground truth of the 'normal ecg' records among ``n_cases`` simulated cases (same fields as LUDB's)."""
    out = []
    for i in range(n_cases):
        case = simulate_case([seed, i])
        if "normal_ecg" not in case["diagnoses"]:
            continue
        t = case["truth"]
        out.append(
            {
                "id": f"synth-{i}",
                "hr_bpm": t["hr_bpm"],
                "pr_ms": t["pr_ms"],
                "qrs_ms": t["qrs_ms"],
                "qt_ms": t["qt_ms"],
                "r_mv": dict(t["per_lead"]["r_mv"]),
                "t_mv": dict(t["per_lead"]["t_mv"]),
                # most negative QRS deflection (Q or S), as LUDB's "S" below
                "s_mv": {n: min(t["per_lead"]["q_mv"][n], t["per_lead"]["s_mv"][n]) for n in LEAD_NAMES},
            }
        )
    return out


def _values(records: list[dict], key: str, lead: str | None = None) -> np.ndarray:
    v = [r[key][lead] if lead else r[key] for r in records]
    return np.array([x for x in v if x is not None and np.isfinite(x)], dtype=float)


def compare_ranges(synth: list[dict], ludb: list[dict]) -> list[dict]:
    """One row per quantity (and lead): LUDB and synthetic percentiles and whether the rule holds."""
    rows = []
    for key in INTERVALS:
        lu, sy = _values(ludb, key), _values(synth, key)
        lo, hi = lu.min(), lu.max()
        pad = 0.1 * (hi - lo)
        s10, s50, s90 = np.percentile(sy, [10, 50, 90])
        l10, l90 = np.percentile(lu, [10, 90])
        ok = bool(l10 <= s50 <= l90 and lo - pad <= s10 and s90 <= hi + pad)
        rows.append(
            {
                "quantity": key,
                "lead": "",
                "ludb": (lo, l10, float(np.median(lu)), l90, hi),
                "synth": (s10, s50, s90),
                "ok": ok,
            }
        )
    for key in AMPLITUDES:
        for lead in LEAD_NAMES:
            lu, sy = _values(ludb, key, lead), _values(synth, key, lead)
            l5, l50, l95 = np.percentile(lu, [5, 50, 95])
            s10, s50, s90 = np.percentile(sy, [10, 50, 90])
            ok = bool(l5 - 0.1 <= s50 <= l95 + 0.1)
            rows.append(
                {
                    "quantity": key,
                    "lead": lead,
                    "ludb": (lu.min(), l5, l50, l95, lu.max()),
                    "synth": (s10, s50, s90),
                    "ok": ok,
                }
            )
    return rows


def format_rows(rows: list[dict]) -> str:
    """Comparison table as text."""
    lines = [
        f"{'quantity':9s} {'lead':4s} {'LUDB min/p10|p5/median/p90|p95/max':>42s}   {'synth p10/median/p90':>22s}  ok"
    ]
    for r in rows:
        lu = "/".join(f"{v:.2f}" if abs(v) < 10 else f"{v:.0f}" for v in r["ludb"])
        sy = "/".join(f"{v:.2f}" if abs(v) < 10 else f"{v:.0f}" for v in r["synth"])
        lines.append(f"{r['quantity']:9s} {r['lead']:4s} {lu:>42s}   {sy:>22s}  {'yes' if r['ok'] else 'NO'}")
    return "\n".join(lines)
