"""The knowledge base (feature phrases in reports, statement -> candidate features) and the synthetic corpus's
mention rate calibrated from it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from fgclep_plugin.augment import knowledge as kb
from fgclep_plugin.synth.reports import DEFAULT_P_MENTION, make_report
from fgclep_plugin.synth.source import SynthSource, synth_record
from fgclep_plugin.synth.vocabulary import DIAGNOSES, FEATURES

PTBXL = Path("../shared/data/ptbxl/ptbxl_database_v1.0.1_from_xlsx.csv")


def test_stated_features_reads_leads_and_territories():
    r = (
        "sinus rhythm. qs complexes in v2,3, q waves in i, avl, v4,5,6. st segments are elevated in v2,3,4. "
        "t waves are inverted in i, avl, v2-6."
    )
    assert kb.stated_features(r) == {"q_anterior", "q_lateral", "ste_anterior", "twi_anterior", "twi_lateral"}
    assert kb.stated_features("sinusrhythmus lagetyp normal qt-verlängerung") == {"long_qt"}
    assert kb.stated_features("sinusrhythmus linkstyp periphere niederspannung") == {"low_voltage_limb"}
    assert kb.stated_features("st segments are depressed in ii, iii, avf") == {"std_inferior"}
    # diagnoses, axis statements and "normal" findings are not waveform features
    for r in ("sinus rhythm. left bundle branch block. abnormal ecg.", "left axis deviation.", "normal ecg."):
        assert kb.stated_features(r) == set(), r
    assert kb.stated_features("q waves in ii, iii, avf are probably normal.") == set()
    assert kb.leads_in("i, avl, v3-6") == {"i", "avl", "v3", "v4", "v5", "v6"}


def test_every_synthetic_diagnosis_phrase_is_covered_and_candidates_score():
    for name, d in DIAGNOSES.items():
        for p in d["phrases"]:
            cands = kb.propose(p)
            assert cands, (name, p)
            assert all(kb.feature_of(c) in FEATURES or kb.feature_of(c) is None for c in cands)
            assert len(cands) <= kb.MAX_CANDIDATES
    # the canonical phrases map back to their synthetic feature (the scoring map)
    assert all(kb.feature_of(v["phrase"]) == k for k, v in FEATURES.items())
    assert kb.feature_of("delta wave") is None


def test_kb_proposes_more_than_the_generator_links():
    """Like an LLM it proposes features of related diagnoses, so some candidates are usually absent."""
    beyond = 0
    for d in DIAGNOSES.values():
        if not d["features"]:
            continue
        proposed = {kb.feature_of(c) for c in kb.propose(d["phrases"][0])} - {None}
        beyond += bool(proposed - set(d["features"]))
    assert beyond >= 15
    lbbb = {kb.feature_of(c) for c in kb.propose("left bundle branch block.")}
    assert {"wide_qrs", "deep_s_v1v2", "poor_r_progression"} <= lbbb


def test_real_statements_get_candidates():
    assert kb.feature_of(kb.propose("sinusrhythmus linksschenkelblock")[0]) == "sinus_p"
    assert "wide_qrs" in {kb.feature_of(c) for c in kb.propose("vorhofflimmern linksschenkelblock")}
    assert "long_pr" in {kb.feature_of(c) for c in kb.propose("sinus rhythm. prolonged pr interval.")}
    assert "delta wave" in kb.propose("wpw pattern.")
    assert kb.propose("trace only requested.") == []
    assert kb.language("sinusrhythmus lagetyp normal") == "de" and kb.language("sinus rhythm.") == "en"


@pytest.mark.skipif(not PTBXL.exists(), reason="PTB-XL metadata not available")
def test_ptbxl_mention_rate_and_coverage():
    with PTBXL.open(newline="", encoding="utf-8") as f:
        reports = [row["report"] or "" for row in csv.DictReader(f)]
    assert len(reports) == 21837
    stats = kb.report_stats(reports)
    # measured 0.338 / English 0.419 / unique 9,862 (docs/synth_corpus.md): catch a broken phrase table
    assert 0.28 <= stats["share_stating_feature"] <= 0.40
    assert 0.35 <= stats["by_language"]["en"]["share_stating_feature"] <= 0.50
    assert stats["kb_candidate_coverage"] > 0.95
    assert 9000 <= stats["unique_normalised_reports"] <= 11000


def test_mention_rate_parameter_controls_reports():
    """Each present feature is stated with p_mention; what is stated is recorded in ``mentioned``."""
    rng = np.random.default_rng(0)
    feats = ["wide_qrs", "notched_r_lateral", "absent_septal_q", "sinus_p"]
    assert make_report(["sinus_rhythm", "lbbb"], feats, "abnormal", rng, p_mention=0.0)[1] == []
    text, said = make_report(["sinus_rhythm", "lbbb"], feats, "abnormal", rng, p_mention=1.0)
    assert said == ["wide_qrs", "notched_r_lateral", "absent_septal_q"]
    assert {"wide_qrs", "notched_r_lateral", "absent_septal_q"} <= kb.stated_features(text)
    with pytest.raises(ValueError, match="p_mention"):
        SynthSource(p_mention=1.5)
    stated = present = 0
    for i in range(120):
        rec = synth_record(21, "train", i)
        s = rec.meta["synth"]
        assert s["p_mention"] == DEFAULT_P_MENTION
        assert set(s["mentioned_features"]) <= set(rec.labels["features"]) - {"sinus_p"}
        stated += len(s["mentioned_features"])
        present += len(set(rec.labels["features"]) - {"sinus_p"})
    assert 0.15 <= stated / present <= 0.45  # most present features stay unstated


def test_mention_rate_is_part_of_the_corpus_identity(tmp_path):
    from fgclep_plugin.ecgdata.reader import expand_urls, iter_samples
    from fgclep_plugin.synth.corpus import ensure_synth_corpus

    sizes = {"train": 0, "val": 0, "test": 3}
    urls = ensure_synth_corpus(tmp_path, sizes=sizes, seed=9, maxcount=5, p_mention=0.0)
    first = [s["meta"]["synth"]["mentioned_features"] for s in iter_samples(expand_urls(urls["test"]))]
    assert first == [[], [], []]
    # another mention rate is a stale corpus: rebuilt, and the reports now state every present feature
    urls = ensure_synth_corpus(tmp_path, sizes=sizes, seed=9, maxcount=5, p_mention=1.0)
    again = list(iter_samples(expand_urls(urls["test"])))
    for s in again:
        present = set(s["meta"]["labels"]["features"]) - {"sinus_p"}
        assert set(s["meta"]["synth"]["mentioned_features"]) == present
    manifest = next((tmp_path / "test" / ".fgclep-state").glob("*.manifest.json"))
    assert json.loads(manifest.read_text())["n_items"] == 3
