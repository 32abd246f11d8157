"""Lead order checked by physics: Einthoven's law on converted real records of every source.

The tolerance is derived, not picked: each stored value is off by at most half a quantisation step (the file's
unit 1/gain from the header, plus the device's resolution found in the data), the polyphase resampler can grow
a bounded error by at most its L1 gain, and float16 storage rounds each value by at most 2^-11 of its size.
"""

from __future__ import annotations

import numpy as np
import pytest
import wfdb
from sources_helpers import DATA, REAL_FOLDERS, RELATIONS, device_step, einthoven_excess, resample_l1_gain

from fgclep_plugin.ecgdata.ecg import LEADS, LIMB, canonical_lead_name, canonicalize
from fgclep_plugin.ecgdata.records import RejectError
from fgclep_plugin.ecgdata.sources import make_source
from fgclep_plugin.ecgdata.sources.wfdb_io import read_wfdb

CASES = REAL_FOLDERS
CODE15 = next(c for c in CASES if c[0] == "code15")


def _converted(name: str, folder: str, options: dict, limit: int | None = None):
    """(record, canonical ECG, step in mV) for every record of a folder that converts."""
    src = make_source(name, DATA / folder, **options)
    items = ["1"] if name == "ptbxl" else src.items()[:limit]  # PTB-XL: the one row with its waveform
    out = []
    for item in items:
        try:
            rec = src.load(item)
            x, _ = canonicalize(rec, min_seconds=2.0)  # CODE-15 records are 7.3 s: check them too
        except RejectError:
            continue
        base = DATA / folder / ("data" if name == "ludb" else "") / rec.meta["file"]
        stored = read_wfdb(str(base)[: -len(".hea")], physical=False)
        limb = [i for i, n in enumerate(stored.lead_names) if canonical_lead_name(n) in LIMB]
        gain = rec.meta.get("adc_gain_correction", {}).get("gain_used") or min(
            stored.adc_gain[i] for i in limb
        )
        step = device_step(stored.signal[limb].astype(np.float64))
        out.append((rec, x, (step + 1) / gain))  # two roundings: device resolution, then the file's unit
    return out


@pytest.mark.parametrize(
    "name, folder, options", [c for c in CASES if c[0] != "code15"], ids=lambda v: str(v)
)
def test_einthoven_holds_on_every_converted_record(name, folder, options):
    converted = _converted(name, folder, options)
    assert converted
    for rec, x, step_mv in converted:
        excess = einthoven_excess(x, step_mv, rec.fs)
        assert max(excess.values()) <= 1.0, (rec.record_id, excess)


def test_code15_obeys_einthoven_on_the_typical_sample_and_order_is_right():
    """CODE-15 as distributed breaks the law at its extremes (clipped leads; residuals of 11-30 uV after its
    own resampling, up to volts in saturated records), so the typical (median) sample is checked against the
    bound, and every record must fit the true lead order far better than one with aVL and aVF swapped."""
    converted = _converted(*CODE15)
    assert len(converted) > 250
    for rec, x, step_mv in converted:
        excess = einthoven_excess(x, step_mv, rec.fs, stat=np.median)
        assert max(excess.values()) <= 1.0, (rec.record_id, excess)
        swapped = x[[0, 1, 2, 3, 5, 4]]
        assert _rms_residual(x) < 0.5 * _rms_residual(swapped), rec.record_id


def _rms_residual(limb: np.ndarray) -> float:
    x = limb.astype(np.float64)
    res = [sum(c * x[i] for i, c in rel.items()) for rel in RELATIONS.values()]
    return float(np.sqrt(np.mean(np.square(res))))


def test_einthoven_check_detects_a_swap_of_avl_and_avf():
    rec, x, step_mv = _converted("ludb", "ludb", {}, limit=1)[0]
    bad = x.copy()
    bad[[LEADS.index("aVL"), LEADS.index("aVF")]] = bad[[LEADS.index("aVF"), LEADS.index("aVL")]]
    excess = einthoven_excess(bad, step_mv, rec.fs)
    assert excess["aVL = I - II / 2"] > 10 and excess["aVF = II - I / 2"] > 10
    assert excess["II = I + III"] <= 1  # the I-II-III relation cannot see it; the augmented ones do


def test_ludb_header_gains_break_einthoven_and_the_correction_restores_it():
    raw_src = make_source("ludb", DATA / "ludb", correct_gain="false")
    fixed_src = make_source("ludb", DATA / "ludb")
    rel_violation = []
    for item in raw_src.items():
        raw = raw_src.load(item)  # per-lead header gains, as wfdb's physical conversion gives
        assert "adc_gain_correction" not in raw.meta
        header = wfdb.rdheader(str(DATA / "ludb" / "data" / item))
        np.testing.assert_allclose(
            raw.signal, wfdb.rdrecord(str(DATA / "ludb" / "data" / item)).p_signal.T, atol=1e-9
        )
        x, _ = canonicalize(raw)
        step_mv = 2.0 / min(header.adc_gain)  # the most generous bound the header allows
        assert max(einthoven_excess(x, step_mv, 500.0).values()) > 10, item
        i, ii, iii = (x[k].astype(np.float64) for k in range(3))
        rel_violation.append(np.sqrt(np.mean((ii - i - iii) ** 2)) / np.sqrt(np.mean(ii**2)))

        fixed = fixed_src.load(item)
        corr = fixed.meta["adc_gain_correction"]
        assert corr["original_gains"] == header.adc_gain and corr["gain_used"] == 1000.0
        digital = wfdb.rdrecord(str(DATA / "ludb" / "data" / item), physical=False).d_signal.T
        np.testing.assert_allclose(fixed.signal * 1000.0, digital, rtol=0, atol=1e-9)  # one gain, no baseline
    # RMS of II - I - III relative to lead II: median ~50 % over the 200 records (1 % to 235 %)
    assert np.median(rel_violation) > 0.2, np.percentile(rel_violation, [0, 50, 100])


def test_ludb_common_gain_gives_amplitudes_like_the_other_12_lead_databases():
    """The chosen 1000 adu/mV puts LUDB's lead-II peak-to-peak in the range of the CinC 2021 records
    (Georgia, PTB-XL, Ningbo), which are stored with a true 1000 adu/mV."""

    def median_ptp(name, folder):
        src = make_source(name, DATA / folder)
        vals = [np.ptp(canonicalize(src.load(it))[0][1].astype(float)) for it in src.items()]
        return float(np.median(vals))

    ludb_mv, cinc_mv = median_ptp("ludb", "ludb"), median_ptp("georgia", "cinc2021")
    assert 0.5 < ludb_mv < 3.0 and 0.5 < ludb_mv / cinc_mv < 2.0, (ludb_mv, cinc_mv)


def test_resample_gain_is_exactly_one_without_resampling_and_finite_with():
    assert resample_l1_gain(500.0) == 1.0
    for fs in (100.0, 400.0, 1000.0):
        assert 1.0 <= resample_l1_gain(fs) < 3.0
