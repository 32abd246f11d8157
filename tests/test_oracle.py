"""Oracle arms of stage 2 (``fgclep augment --rule oracle``, ``--candidates truth``, ``--move-kept``) on a small
synthetic shard set with FGCLEP-Tiny, checked against the ground truth each sample's json carries."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fgclep_plugin.augment import knowledge as kb
from fgclep_plugin.augment.oracle import NoGroundTruth, derangement, perfect_features
from fgclep_plugin.augment.rewrite import augmented_text, run_augment
from fgclep_plugin.augment.rules import RuleConfig, decide
from fgclep_plugin.ecgdata.reader import iter_samples

MODEL = "FGCLEP-Tiny"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from fgclep_plugin.synth.corpus import generate_corpus

    root = tmp_path_factory.mktemp("oracle")
    generate_corpus(root / "syn", {"test": 12}, seed=5, maxcount=6, p_mention=0.3)
    return root


def _urls(corpus: Path) -> str:
    return str(corpus / "syn" / "test" / "synth-test-{000000..000001}.tar")


def _truth(meta: dict) -> tuple[set[str], set[str]]:
    """Present features and the features the report states, read straight from the json (independent path)."""
    present = set(meta["labels"]["features"])
    return present, set(meta["synth"]["mentioned_features"])


def test_oracle_rule_keeps_the_truth_and_needs_it():
    truth = np.array([True, False, True])
    assert decide(np.zeros(3), np.zeros(3), None, RuleConfig("oracle"), truth).tolist() == [True, False, True]
    with pytest.raises(ValueError, match="ground truth"):
        decide(np.zeros(3), np.zeros(3), None, RuleConfig("oracle"))


def test_derangement_moves_every_item_and_is_seeded():
    for n in (2, 3, 10, 57):
        p = derangement(n, np.random.default_rng(n))
        assert sorted(p) == list(range(n)) and all(p[i] != i for i in range(n))
    a, b = (derangement(40, np.random.default_rng(7)) for _ in range(2))
    assert a == b and a != derangement(40, np.random.default_rng(8))


def test_oracle_arms_write_the_truth(corpus, ckpt, tmp_path):
    cache = str(tmp_path / "cache")
    common = {"progress": False, "log": None, "calib_size": 12}
    val = run_augment(_urls(corpus), str(tmp_path / "v" / "v-%06d.tar"), cache, MODEL, ckpt,
                      RuleConfig("oracle"), **common)  # fmt: skip
    perfect = run_augment(_urls(corpus), str(tmp_path / "p" / "p-%06d.tar"), cache, MODEL, ckpt,
                          RuleConfig("oracle"), candidates="truth", **common)  # fmt: skip
    moved = run_augment(_urls(corpus), str(tmp_path / "m" / "m-%06d.tar"), cache, MODEL, ckpt,
                        RuleConfig("oracle"), move_kept=3, **common)  # fmt: skip
    assert val["samples"] == perfect["samples"] == moved["samples"] == 12
    v = {s["__key__"]: s for s in iter_samples(val["urls"])}
    p = {s["__key__"]: s for s in iter_samples(perfect["urls"])}
    m = {s["__key__"]: s for s in iter_samples(moved["urls"])}
    n_kept = 0
    for key, s in v.items():
        present, stated = _truth(s["meta"])
        report = s["meta"]["stage2"]["report"]
        # perfect validation: a candidate is kept iff its feature is present
        for c in s["meta"]["stage2"]["candidates"]:
            assert c["kept"] == (kb.PHRASE_TO_FEATURE.get(c["text"]) in present), (key, c)
        kept = s["meta"]["stage2"]["kept"]
        n_kept += len(kept)
        assert s["text"] == augmented_text(report, kept)
        # perfect features: every present feature neither mentioned nor stated, all kept
        stated |= kb.stated_features(report)
        want = sorted(kb.phrase(f) for f in present - stated)
        assert sorted(p[key]["meta"]["stage2"]["kept"]) == want
        # wrong features: the kept list of another ECG of the same shard
        donor = m[key]["meta"]["stage2"]["moved_from"]
        assert donor != key and donor.split("-")[:-1] == key.split("-")[:-1]
        assert m[key]["meta"]["stage2"]["kept"] == v[donor]["meta"]["stage2"]["kept"]
        assert m[key]["text"] == augmented_text(report, v[donor]["meta"]["stage2"]["kept"])
    assert n_kept > 0
    oracle = next(g for g in val["ground_truth"] if g["rule"] == "oracle (ground truth)")
    assert oracle["precision"] == 1.0 and oracle["recall"] == 1.0
    pf = next(g for g in perfect["ground_truth"] if g["rule"] == "oracle (ground truth)")
    assert pf["precision"] == 1.0 and pf["recall"] == 1.0
    wrong = next(g for g in moved["ground_truth"] if g["rule"] == "oracle (ground truth)")
    assert wrong["precision"] < 1.0


def test_perfect_features_refuses_samples_without_truth():
    with pytest.raises(NoGroundTruth, match="sample x: no ground truth"):
        perfect_features({"labels": {"diagnoses": ["af"]}}, "atrial fibrillation.", "shard.tar: sample x")


def test_cli_refuses_data_without_truth(tmp_path):
    """``fgclep augment --rule oracle`` on shards without ground truth: exit 1 and one line naming the sample."""
    from fgclep_plugin.ecgdata.shards import write_shards
    from fgclep_plugin.synth.source import SynthSource

    class Stripped(SynthSource):  # the synthetic samples with their truth removed, as real data comes
        def load(self, item):
            r = super().load(item)
            return dataclasses.replace(r, labels={}, meta={k: v for k, v in r.meta.items() if k != "synth"})

    write_shards(Stripped(split="test", n=2, seed=1), str(tmp_path / "d" / "d-%06d.tar"), 5, 1)
    r = subprocess.run(
        [sys.executable, "-m", "fgclep_plugin.cli", "augment", "--data", str(tmp_path / "d" / "d-000000.tar"),
         "--out", str(tmp_path / "o" / "o-%06d.tar"), "--cache", str(tmp_path / "c"), "--model", MODEL,
         "--checkpoint", "none", "--rule", "oracle", "--quiet"],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    err = [ln for ln in r.stderr.splitlines() if "error" in ln]
    assert len(err) == 1 and "no ground truth" in err[0] and "d-000000.tar: sample" in err[0]
    assert not list((tmp_path / "o").glob("*.tar"))
