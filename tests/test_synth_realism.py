"""Ground truth against an independent delineator (neurokit2) and synthetic normals against LUDB's normals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

LUDB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ludb"


@pytest.fixture(scope="module")
def nk_rows():
    pytest.importorskip("neurokit2")
    from fgclep_plugin.synth.verify import compare

    return compare(n=80, seed=4321)


def test_neurokit2_agrees_with_generator_intervals(nk_rows):
    from fgclep_plugin.synth.verify import agreement_table

    table = agreement_table(nk_rows)
    minimum = {"hr_bpm": 0.9, "pr_ms": 0.9, "qrs_ms": 0.8, "qt_ms": 0.85, "qrs_ms <120": 0.9}
    for key, rate in minimum.items():
        assert table[key]["n"] >= 60, (key, table[key])
        assert table[key]["agree_rate"] >= rate, (key, table[key])
    assert abs(table["qrs_ms <120"]["mean_diff"]) < 10 and abs(table["pr_ms"]["mean_diff"]) < 15


def test_agreement_detects_a_wrong_ground_truth(nk_rows):
    """The same comparison rejects generator values that are off by a clinically relevant amount."""
    from fgclep_plugin.synth.verify import TOLERANCES, agreement_table

    shifted = []
    for row in nk_rows:
        row = dict(row)
        for key, tol in TOLERANCES.items():
            if row[key] is not None:
                gen, meas = row[key]
                row[key] = (gen * 1.25 if key == "hr_bpm" else gen + 2.5 * tol, meas)
        shifted.append(row)
    table = agreement_table(shifted)
    assert all(table[key]["agree_rate"] < 0.2 for key in TOLERANCES), table


@pytest.mark.skipif(not (LUDB / "ludb.csv").exists(), reason="LUDB not found beside the project")
def test_synthetic_normals_fall_within_ludb_normal_ranges():
    from fgclep_plugin.synth.ludb import measure_normals
    from fgclep_plugin.synth.realism import compare_ranges, format_rows, synthetic_normals

    ludb = measure_normals(LUDB)
    assert len(ludb) >= 20
    # LUDB's own numbers are physiological (an independent sanity check of the LUDB reader)
    hr = np.array([r["hr_bpm"] for r in ludb])
    assert 50 < hr.min() and hr.max() < 100
    synth = synthetic_normals(n_cases=300, seed=99)
    assert len(synth) >= 100
    rows = compare_ranges(synth, ludb)
    bad = [r for r in rows if not r["ok"]]
    assert not bad, format_rows(bad)
    # and the rule has teeth: a synthetic corpus with QT 60 ms too long fails it
    longer = [dict(r, qt_ms=r["qt_ms"] + 60.0) for r in synth]
    assert not next(r for r in compare_ranges(longer, ludb) if r["quantity"] == "qt_ms")["ok"]
