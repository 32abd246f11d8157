"""Canonical ECG rules: leads by name, derivation, NaN repair, resampling, crop/pad, flat and amplitude checks."""

from __future__ import annotations

import numpy as np
import pytest
import wfdb
from scipy.signal import butter, decimate, filtfilt
from scipy.signal import resample as fft_resample
from shard_helpers import LUDB

from fgclep_plugin.ecgdata.ecg import FS, LEADS, N_SAMPLES, canonical_lead_name, canonicalize
from fgclep_plugin.ecgdata.records import EcgRecord, RejectError


def _ludb(i: int = 2) -> tuple[np.ndarray, list[str]]:
    r = wfdb.rdrecord(str(LUDB / str(i)))
    return r.p_signal.T.copy(), r.sig_name


def _rec(sig, names, fs=FS, rid="r") -> EcgRecord:
    return EcgRecord("test", rid, sig, fs, list(names), "sinus rhythm")


@pytest.mark.parametrize(
    ("name", "canon"),
    [
        ("i", "I"),
        ("AVR", "aVR"),
        ("avl", "aVL"),
        ("Lead V1", "V1"),
        ("lead_ii", "II"),
        ("vx", None),
        ("MLII", None),
        ("-aVR", None),
        (" -avr", None),
        ("lead-II", "II"),
        ("Lead_V1", "V1"),
        ("LEAD aVF", "aVF"),
        ("I-II", None),  # a difference of leads (or a typo), not lead III
        ("I_I", None),
        ("V-1", None),
        ("a VR", None),
    ],
)
def test_lead_aliases(name, canon):
    assert canonical_lead_name(name) == canon


def test_leads_reordered_by_name_not_position():
    sig, names = _ludb()
    perm = [0, 1, 2, 3, 5, 4, 11, 10, 9, 8, 7, 6]  # MIMIC-like aVF/aVL swap plus reversed precordials
    shuffled = _rec(sig[perm], [names[p].upper() for p in perm])
    a, _ = canonicalize(_rec(sig, names))
    b, meta = canonicalize(shuffled)
    np.testing.assert_array_equal(a, b)
    assert meta["lead_names_found"][4] == "AVF"


def test_extra_channels_ignored_and_missing_precordial_rejected():
    sig, names = _ludb()
    extra = np.vstack([sig, np.ones((3, sig.shape[1]))])
    x, _ = canonicalize(_rec(extra, list(names) + ["vx", "vy", "vz"]))
    assert x.shape == (12, N_SAMPLES)
    with pytest.raises(RejectError, match=r"missing-lead: test:r: no lead\(s\) V3"):
        canonicalize(_rec(np.delete(sig, 8, axis=0), [n for n in names if n != "v3"]))


def test_limb_leads_derived_from_two():
    sig, names = _ludb(5)
    # Use an Einthoven-consistent signal: I and II measured, the rest derived by definition below.
    i, ii = sig[0], sig[1]
    keep = [0, 1] + list(range(6, 12))
    x, meta = canonicalize(_rec(sig[keep], [names[k] for k in keep]))
    assert sorted(meta["derived_leads"]) == ["III", "aVF", "aVL", "aVR"]
    tol = 2e-3 * (1 + np.abs(sig[:2]).max())  # float16 rounding
    np.testing.assert_allclose(x[2], ii - i, atol=tol)
    np.testing.assert_allclose(x[3], -(i + ii) / 2, atol=tol)
    np.testing.assert_allclose(x[4], i - ii / 2, atol=tol)
    np.testing.assert_allclose(x[5], ii - i / 2, atol=tol)


def test_nan_short_gap_interpolated_long_gap_rejected():
    sig, names = _ludb()
    short = sig.copy()
    short[3, 1000:1020] = np.nan  # 40 ms
    x, meta = canonicalize(_rec(short, names))
    assert meta["nan_repaired"] == 20 and np.isfinite(x.astype(np.float32)).all()
    ramp = np.linspace(sig[3, 999], sig[3, 1020], 22)[1:-1]
    np.testing.assert_allclose(x[3, 1000:1020].astype(np.float64), ramp, atol=2e-3)
    long = sig.copy()
    long[7, 2000:2200] = np.nan  # 0.4 s
    with pytest.raises(RejectError, match="nan-gap: test:r: lead V2 has a NaN run of 200 samples"):
        canonicalize(_rec(long, names))


def _lowpass(x: np.ndarray, fs: float, cutoff: float) -> np.ndarray:
    b, a = butter(4, cutoff / (fs / 2))
    return filtfilt(b, a, x, axis=-1)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_resampling_100_and_1000_hz_recover_the_500_hz_waveform(tmp_path):
    """Write real LUDB signals at 1000 Hz (FFT upsampling) and 100 Hz (FIR decimation) as WFDB files, read
    them back and canonicalise: the polyphase path must give back the 500 Hz original (low-passed to what
    100 Hz can carry)."""
    sig, names = _ludb(7)
    for fs, make in (
        (1000, lambda s: fft_resample(s, 2 * s.shape[1], axis=1)),
        (100, lambda s: decimate(s, 5, ftype="fir", axis=1, zero_phase=True)),
    ):
        data = make(sig)
        wfdb.wrsamp(
            f"r{fs}",
            fs=fs,
            units=["mV"] * 12,
            sig_name=list(names),
            p_signal=data.T,
            fmt=["16"] * 12,
            adc_gain=[1000.0] * 12,
            baseline=[0] * 12,
            write_dir=str(tmp_path),
        )
        r = wfdb.rdrecord(str(tmp_path / f"r{fs}"))
        assert r.fs == fs
        x, meta = canonicalize(_rec(r.p_signal.T, r.sig_name, fs=r.fs))
        assert x.shape == (12, N_SAMPLES) and meta["fs_original"] == fs
        y = x.astype(np.float64)[:, 250:-250]  # edges carry filter transients
        ref = sig if fs == 1000 else _lowpass(sig, FS, 35)
        ref = ref[:, 250:-250]
        y = y if fs == 1000 else _lowpass(x.astype(np.float64), FS, 35)[:, 250:-250]
        rel = np.sqrt(np.mean((y - ref) ** 2)) / np.sqrt(np.mean(ref**2))
        assert _corr(y, ref) > (0.999 if fs == 1000 else 0.99), fs
        assert rel < (0.03 if fs == 1000 else 0.15), (fs, rel)


def test_crop_and_pad_rules():
    sig, names = _ludb(3)
    long = np.concatenate([sig, sig[:, :2500]], axis=1)  # 15 s
    x, meta = canonicalize(_rec(long, names))
    np.testing.assert_allclose(x.astype(np.float32), sig.astype(np.float16).astype(np.float32), atol=1e-3)
    assert meta["seconds_original"] == 15.0 and meta["crop_start_s"] == 0.0
    xc, meta = canonicalize(_rec(long, names), crop="center")
    assert meta["crop_start_s"] == 2.5
    np.testing.assert_allclose(
        xc[:, :2500].astype(np.float32), sig[:, 1250:3750].astype(np.float16), atol=1e-3
    )
    short = sig[:, :4500]  # 9 s
    x, meta = canonicalize(_rec(short, names))
    assert meta["padded_s"] == 1.0
    assert (x[:, 4500:] == x[:, 4499:4500]).all()
    with pytest.raises(RejectError, match=r"too-short: test:r: 7.00 s < minimum 8.0 s"):
        canonicalize(_rec(sig[:, :3500], names))


def test_flat_leads_flagged_all_flat_and_unit_errors_rejected():
    sig, names = _ludb()
    one = sig.copy()
    one[9] = 0.0
    _, meta = canonicalize(_rec(one, names))
    assert meta["flat_leads"] == ["V4"]
    with pytest.raises(RejectError, match="flat-signal"):
        canonicalize(_rec(np.zeros_like(sig), names))
    with pytest.raises(RejectError, match="amplitude: .*wrong units"):
        canonicalize(_rec(sig * 1000, names))


def test_output_is_float16_canonical_shape():
    sig, names = _ludb()
    x, _ = canonicalize(_rec(sig, names))
    assert x.dtype == np.float16 and x.shape == (len(LEADS), N_SAMPLES)


def test_inverted_lead_is_not_taken_as_the_lead():
    """Cabrera displays store -aVR; read as aVR it would carry the wrong sign. It is ignored and aVR derived."""
    sig, names = _ludb(4)
    inverted = sig.copy()
    inverted[3] = -sig[3]
    x, meta = canonicalize(_rec(inverted, [("-aVR" if n == "avr" else n) for n in names]))
    assert meta["derived_leads"] == ["aVR"]
    ref, _ = canonicalize(_rec(sig, names))
    tol = 2e-3 * (1 + np.abs(sig).max())
    np.testing.assert_allclose(x[3].astype(np.float64), -(sig[0] + sig[1]) / 2, atol=tol)
    assert _corr(x[3].astype(np.float64), ref[3].astype(np.float64)) > 0.99  # same sign as the true aVR


def test_nan_gap_outside_the_kept_window_rejects_nothing():
    sig, names = _ludb(6)
    long = np.concatenate([sig, sig, sig], axis=1)  # 30 s
    long[4, 12000:12500] = np.nan  # 1 s gap at 24-25 s: outside both the first and the middle 10 s (+1 s)
    x, meta = canonicalize(_rec(long, names))
    assert meta["nan_repaired"] == 0 and np.isfinite(x.astype(np.float32)).all()
    np.testing.assert_allclose(x.astype(np.float32), sig.astype(np.float16).astype(np.float32), atol=1e-3)
    _, meta = canonicalize(_rec(long, names), crop="center")
    assert meta["crop_start_s"] == 10.0
    inside = long.copy()
    inside[4, 7000:7500] = np.nan  # 14-15 s: inside the middle window
    canonicalize(_rec(inside, names))  # the first 10 s are clean
    with pytest.raises(RejectError, match="nan-gap: test:r: lead aVL has a NaN run of 500 samples"):
        canonicalize(_rec(inside, names), crop="center")


@pytest.mark.parametrize("fs", [257, 360, 1000])
def test_center_crop_start_is_the_true_offset(fs):
    """``crop_start_s`` is where the kept window really starts, to a fraction of a sample, at any rate."""
    f, n = 1.3, round(23.7 * fs)
    t = np.arange(n) / fs
    sig = np.stack([np.sin(2 * np.pi * f * t + k) for k in range(12)])
    x, meta = canonicalize(_rec(sig, LEADS, fs=fs), crop="center")
    tt = meta["crop_start_s"] + np.arange(N_SAMPLES) / FS
    ref = np.stack([np.sin(2 * np.pi * f * tt + k) for k in range(12)])
    assert abs(meta["crop_start_s"] - (n / fs - 10) / 2) <= 0.5 / fs
    assert np.abs(x.astype(np.float64) - ref)[:, 50:-50].max() < 2e-3  # float16 rounding only
