"""Synthetic ECG corpus: simulator physics, ground truth against the signal, vocabulary, reports, shards."""

from __future__ import annotations

import json
import time
from collections import defaultdict

import numpy as np
import pytest

from fgclep_plugin.ecgdata.ecg import LEADS
from fgclep_plugin.synth.cases import simulate_case
from fgclep_plugin.synth.geometry import LEAD_INDEX, LEAD_NAMES, frontal_axis_deg
from fgclep_plugin.synth.simulator import TERRITORY_LEADS, EcgSpec, NoiseSpec, render
from fgclep_plugin.synth.source import SynthSource, synth_record
from fgclep_plugin.synth.vocabulary import DIAGNOSES, FEATURES

I, II, III, AVR, AVL, AVF = (LEAD_INDEX[n] for n in ("I", "II", "III", "aVR", "aVL", "aVF"))


def test_lead_names_are_the_canonical_order():
    assert tuple(LEAD_NAMES) == tuple(LEADS)


@pytest.mark.parametrize("rhythm", ["sinus", "af", "flutter", "paced"])
def test_einthoven_law_holds_with_noise(rhythm):
    spec = EcgSpec(
        rhythm=rhythm,
        qrs_type="paced" if rhythm == "paced" else "normal",
        n_pvc=1,
        noise=NoiseSpec(baseline_mv=0.3, muscle_mv=0.05, powerline_mv=0.05),
    )
    x, truth = render(spec, 3, with_clean=True)
    for sig in (x, truth["clean"]):
        sig = sig.astype(np.float64)
        assert np.abs(sig[II] - sig[I] - sig[III]).max() < 1e-5
        assert np.abs(sig[AVR] + sig[AVL] + sig[AVF]).max() < 1e-5
        assert np.abs(sig[AVF] - (sig[II] + sig[III]) / 2).max() < 1e-5
    assert np.abs(x[II]).max() > 0.3  # a real signal, not zeros


@pytest.mark.parametrize("axis", [-60.0, 0.0, 45.0, 120.0])
def test_axis_parameter_is_the_measured_frontal_axis(axis):
    spec = EcgSpec(axis_deg=axis, t_axis_deg=45.0, noise=NoiseSpec(0, 0, 0, 50, 0))
    _, truth = render(spec, 1, with_clean=True)
    clean = truth["clean"].astype(np.float64)
    # net QRS area of every beat in leads I and II, straight from the rendered signal
    areas = np.zeros(2)
    for on in truth["qrs_onsets_ms"]:
        a, b = round(on / 2), round((on + truth["qrs_ms"]) / 2) + 1
        if a >= 0 and b <= clean.shape[1]:
            areas += clean[[I, II], a:b].sum(1)
    measured = frontal_axis_deg(areas[0], areas[1])
    assert abs((measured - axis + 180) % 360 - 180) < 2.0


def test_record_is_deterministic_in_seed_and_differs_across_seeds():
    a, b = synth_record(0, "train", 5), synth_record(0, "train", 5)
    assert np.array_equal(a.signal, b.signal) and a.report == b.report and a.meta == b.meta
    c = synth_record(1, "train", 5)
    d = synth_record(0, "val", 5)
    assert not np.array_equal(a.signal, c.signal) and not np.array_equal(a.signal, d.signal)
    assert a.signal.shape == (12, 5000) and a.fs == 500 and list(a.lead_names) == list(LEADS)


def _median_at(clean: np.ndarray, truth: dict, offset_ms: float) -> np.ndarray:
    """Median over beats of every lead's value ``offset_ms`` after QRS onset (from the signal itself)."""
    vals = []
    for on in truth["qrs_onsets_ms"]:
        k = round((on + offset_ms) / 2)
        if 0 <= k < clean.shape[1]:
            vals.append(clean[:, k])
    return np.median(np.array(vals), axis=0)


def test_st_and_rate_features_are_in_the_signal():
    """Features read off the template must be visible in the beat-stamped signal (independent read-out)."""
    seen = defaultdict(int)
    for i in range(400):
        case = simulate_case([77, i], with_clean=True)
        feats, truth = set(case["features"]), case["truth"]
        if case["spec"].rhythm != "sinus" or truth["n_pvc"] or truth["n_pac"]:
            continue
        st = _median_at(truth["clean"].astype(np.float64), truth, truth["qrs_ms"])
        for terr, leads in TERRITORY_LEADS.items():
            idx = [LEAD_INDEX[n] for n in leads]
            if f"ste_{terr}" in feats:
                seen["ste"] += 1
                assert (st[idx] >= 0.08).sum() >= 2, (i, terr, st[idx])
            if f"std_{terr}" in feats:
                seen["std"] += 1
                assert (st[idx] <= -0.04).sum() >= 2, (i, terr, st[idx])
        if "normal_ecg" in case["diagnoses"]:
            seen["normal"] += 1
            assert np.abs(st).max() < 0.05, (i, st)
        rr = np.diff(truth["qrs_onsets_ms"])
        hr = 60000.0 / rr.mean()
        assert ("slow_rate" in feats) == (hr < 60) and ("fast_rate" in feats) == (hr > 100)
    assert seen["ste"] >= 1 and seen["std"] >= 3 and seen["normal"] >= 100, dict(seen)


def test_vocabulary_is_consistent_and_links_are_not_bijective():
    from fgclep_plugin.synth.vocabulary import feature_by_phrase, feature_phrase

    phrases = [f["phrase"] for f in FEATURES.values()]
    assert len(phrases) == len(set(phrases))
    index = feature_by_phrase()
    assert index["st elevation in ii, iii, avf"] == "ste_inferior"
    assert all(index[feature_phrase(k).lower()] == k for k in FEATURES)
    with pytest.raises(KeyError, match="unknown waveform feature 'st_bump'"):
        feature_phrase("st_bump")
    for name, d in DIAGNOSES.items():
        assert set(d["features"]) <= set(FEATURES), name
        assert d["phrases"], name
    rhythm_p = sum(d["prevalence"] for d in DIAGNOSES.values() if d["group"] == "rhythm")
    assert rhythm_p == pytest.approx(1.0)
    # the same diagnosis is realised by different feature sets, and a feature serves several diagnoses
    sets = defaultdict(set)
    normal = 0
    n = 600
    for i in range(n):
        case = simulate_case([5, i])
        normal += "normal_ecg" in case["diagnoses"]
        for d in case["diagnoses"]:
            sets[d].add(tuple(case["features"]))
    assert len(sets["lvh"]) >= 3 and len(sets["nonspecific_st_t"]) >= 3
    users = [d for d, v in DIAGNOSES.items() if "twi_lateral" in v["features"]]
    assert len(users) >= 3
    assert 0.35 <= normal / n <= 0.7  # most ECGs normal or near-normal


def test_reports_state_diagnoses_and_rarely_features():
    mentioned = 0
    n = 300
    for i in range(n):
        rec = synth_record(3, "train", i)
        s = rec.meta["synth"]
        text = rec.report
        assert text.endswith(".") and text == text.lower()
        for d in s["diagnoses"]:
            if d != "normal_ecg":
                assert any(p in text for p in DIAGNOSES[d]["phrases"]), (d, text)
        if "normal_ecg" in s["diagnoses"]:
            assert "normal" in text and "abnormal" not in text
        mentioned += bool(s["mentioned_features"])
        assert set(s["mentioned_features"]) <= set(rec.labels["features"])
        assert [f["name"] for f in s["features"]] == rec.labels["features"]
    assert 0.03 <= mentioned / n <= 0.3


def test_shards_round_trip_and_regenerate_only_when_missing(tmp_path):
    from fgclep_plugin.ecgdata.reader import expand_urls, iter_samples
    from fgclep_plugin.synth.corpus import ensure_synth_corpus

    sizes = {"train": 12, "val": 4, "test": 4}
    urls = ensure_synth_corpus(tmp_path, sizes=sizes, seed=11, maxcount=5)
    assert urls["train"].endswith("synth-train-{000000..000002}.tar")
    sizes_json = json.loads((tmp_path / "train" / "sizes.json").read_text())
    assert sum(sizes_json.values()) == 12
    samples = list(iter_samples(expand_urls(urls["val"])))
    assert len(samples) == 4
    s = samples[2]
    ref = synth_record(11, "val", 2)
    assert s["text"] == ref.report
    assert s["meta"]["synth"]["measurements"]["qrs_ms"] == ref.meta["synth"]["measurements"]["qrs_ms"]
    assert s["meta"]["labels"]["features"] == ref.labels["features"]
    assert np.abs(s["ecg"].astype(np.float32) - ref.signal).max() < 0.01  # float16 rounding only
    shard = tmp_path / "train" / "synth-train-000001.tar"
    mtime = shard.stat().st_mtime_ns
    shard2 = tmp_path / "train" / "synth-train-000002.tar"
    shard2.unlink()
    assert ensure_synth_corpus(tmp_path, sizes=sizes, seed=11, maxcount=5) == urls
    assert shard.stat().st_mtime_ns == mtime and shard2.exists()
    from fgclep_plugin.synth.corpus import generate_corpus

    with pytest.raises(RuntimeError, match="different input"):  # the command never deletes
        generate_corpus(tmp_path, sizes, seed=12, maxcount=5)
    # ensure_synth_corpus treats another seed's corpus as a stale cache and rebuilds it
    assert ensure_synth_corpus(tmp_path, sizes=sizes, seed=12, maxcount=5) == urls
    rebuilt = list(iter_samples(expand_urls(urls["val"])))
    assert rebuilt[2]["text"] == synth_record(12, "val", 2).report
    # ... but not a folder holding anything it did not write
    (tmp_path / "test" / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="different input"):
        ensure_synth_corpus(tmp_path, sizes=sizes, seed=13, maxcount=5)
    assert (tmp_path / "test" / "notes.txt").exists()


def test_source_rejects_unknown_split_and_is_picklable():
    import pickle

    with pytest.raises(ValueError, match="unknown synthetic split 'dev'"):
        SynthSource(split="dev")
    src = pickle.loads(pickle.dumps(SynthSource("test", 3, seed=2)))
    assert [src.load(it).record_id for it in src.items()] == [
        "test-s2-000000",
        "test-s2-000001",
        "test-s2-000002",
    ]


def test_cli_writes_corpus(tmp_path, capsys):
    from fgclep_plugin.cli import main

    assert (
        main(["synth", "--out", str(tmp_path), "--train", "3", "--val", "2", "--test", "1", "--quiet"]) == 0
    )
    out = capsys.readouterr().out
    assert "train: 3 ECGs" in out and (tmp_path / "test" / "synth-test-000000.tar").exists()


def test_clinical_plot_draws_by_lead_name(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fgclep_plugin.ecgdata.plot import plot_ecg12

    rec = synth_record(0, "test", 0)
    order = [5, 4, 3, 2, 1, 0, 6, 7, 8, 9, 10, 11]  # shuffled limb leads: placement must follow names
    ax = plot_ecg12(rec.signal[order], 500, [rec.lead_names[k].lower() for k in order])
    lines = [ln for ln in ax.lines if len(ln.get_xdata()) > 100]
    assert len(lines) == 13  # 12 lead segments + rhythm strip
    first = lines[0].get_ydata()  # lead I (top-left), 10 mm/mV around its baseline
    expect = rec.signal[0, : len(first)] * 10.0
    assert np.allclose(first - first[0], expect - expect[0], atol=1e-6)
    plt.savefig(tmp_path / "ecg.png")
    assert (tmp_path / "ecg.png").stat().st_size > 10_000
    with pytest.raises(KeyError, match="lead V6"):
        plot_ecg12(rec.signal[:11], 500, rec.lead_names[:11])
    plt.close("all")
    offset = rec.signal + np.linspace(-9.0, 9.0, 12)[:, None]  # DC-coupled leads, as CODE-15 stores them
    ax = plot_ecg12(offset, 500, rec.lead_names)
    drawn = [ln for ln in ax.lines if len(ln.get_xdata()) > 100]
    assert len(drawn) == len(lines)
    for ln, ref in zip(drawn, lines):  # each trace exactly where it was without the offsets: in its own row
        np.testing.assert_allclose(ln.get_ydata(), ref.get_ydata(), atol=1e-6)
    plt.close("all")


def test_corpus_is_byte_identical_across_runs_and_worker_counts(tmp_path):
    from fgclep_plugin.synth.corpus import ensure_synth_corpus

    sizes = {"train": 6, "val": 0, "test": 2}
    a = ensure_synth_corpus(tmp_path / "a", sizes=sizes, seed=4, maxcount=4)
    b = ensure_synth_corpus(tmp_path / "b", sizes=sizes, seed=4, maxcount=4, workers=2)
    assert set(a) == set(b) == {"train", "test"}
    for split in a:
        for k in range(2 if split == "train" else 1):
            name = f"synth-{split}-{k:06d}.tar"
            assert (tmp_path / "a" / split / name).read_bytes() == (
                tmp_path / "b" / split / name
            ).read_bytes()
    ensure_synth_corpus(tmp_path / "c", sizes=sizes, seed=5, maxcount=4)
    other = (tmp_path / "c" / "test" / "synth-test-000000.tar").read_bytes()
    assert other != (tmp_path / "a" / "test" / "synth-test-000000.tar").read_bytes()


def test_concurrent_ensure_calls_take_turns(tmp_path, capsys):
    """Two processes asking for the corpus at once (two test sessions on a fresh or stale cache): the second
    waits for the first instead of generating, or deleting a stale split, underneath it."""
    import fcntl
    import threading

    from fgclep_plugin.ecgdata.reader import iter_samples
    from fgclep_plugin.synth.corpus import ensure_synth_corpus

    sizes = {"train": 0, "val": 3, "test": 0}
    got: dict = {}
    with open(tmp_path / ".synth-val.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another caller is working on the val split
        t = threading.Thread(
            target=lambda: got.update(ensure_synth_corpus(tmp_path, sizes=sizes, maxcount=5))
        )
        t.start()
        time.sleep(0.5)
        assert t.is_alive() and not (tmp_path / "val").exists()
        fcntl.flock(held, fcntl.LOCK_UN)
    t.join(60)
    captured = capsys.readouterr()
    assert "waiting for another process writing the synthetic val split" in captured.err, captured
    assert [s["meta"]["record_id"] for s in iter_samples(got["val"])] == [f"val-s0-{i:06d}" for i in range(3)]


def test_amplitudes_stay_physiological():
    """LVH voltage targets and infarct Q waves once scaled the QRS without bound (seed 3, test record 0 reached
    31 mV in V2): every record's peak must stay below 10 mV."""
    peaks = [float(np.abs(synth_record(seed, "test", i).signal).max()) for seed in (0, 3) for i in range(150)]
    assert max(peaks) < 10.0


def test_cli_reports_rejected_records(tmp_path, capsys, monkeypatch):
    """A record the writer rejects must be reported by ``fgclep synth``, not hidden behind a smaller count."""
    from fgclep_plugin.cli import main
    from fgclep_plugin.ecgdata.records import RejectError

    load = SynthSource.load

    def load_rejecting_first(self, item):
        if item[3] == 0:
            raise RejectError("amplitude", "synth:test-0: |signal| reaches 31.0 mV")
        return load(self, item)

    monkeypatch.setattr(SynthSource, "load", load_rejecting_first)
    args = ["synth", "--out", str(tmp_path), "--train", "0", "--val", "0", "--test", "2", "--seed", "3"]
    assert main([*args, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "test : 1 ECGs" in out and "rejected 1 (1 amplitude): see" in out
