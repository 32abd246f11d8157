"""Linear probe: selection never reads test labels (MERL's selection does), fractions and repeats, the cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
from eval_helpers import LUDB_SHARDS, MODEL, clustered_split, tiny_checkpoint
from sklearn.model_selection import train_test_split

from fgclep_plugin.evaluate import zeroshot
from fgclep_plugin.evaluate.linear import MERL_SELECTION, VAL_SELECTION, probe_fraction, subset
from fgclep_plugin.evaluate.tasks import get_task
from fgclep_plugin.evaluate.zeroshot import EmbeddedSplit, cached_split
from fgclep_plugin.model.scoring import load_model


@pytest.fixture(scope="module")
def splits():
    return (
        clustered_split(160, seed=0, signal=2.5),
        clustered_split(80, seed=1, signal=2.5),
        clustered_split(80, seed=2, signal=2.5),
    )


def shuffled(split: EmbeddedSplit, seed: int = 0) -> EmbeddedSplit:
    perm = np.random.default_rng(seed).permutation(len(split.targets))
    return EmbeddedSplit(split.embeddings, split.targets[perm], split.keys, split.class_names)


def selections(result, key):
    return [(r["weight_decay"], r[key]) for r in result["runs"]]


def test_shuffled_test_labels_change_nothing_selected_but_move_merls_choice(splits):
    train, val, test = splits
    kw = {"epochs": 20, "bootstrap": 0, "progress": False, "weight_decays": (0.0, 1e-2)}
    ours = probe_fraction(train, val, test, 100, **kw)
    ours_shuffled = probe_fraction(train, val, shuffled(test), 100, **kw)
    assert selections(ours, "epoch") == selections(ours_shuffled, "epoch")
    assert ours["runs"][0]["val_auc"] == ours_shuffled["runs"][0]["val_auc"]
    assert ours["value"] > 0.75 and abs(ours_shuffled["value"] - 0.5) < 0.15  # test really was scrambled
    assert ours["selection"] == VAL_SELECTION

    merl = probe_fraction(train, val, test, 100, merl_selection=True, **kw)
    merl_shuffled = probe_fraction(train, val, shuffled(test), 100, merl_selection=True, **kw)
    assert merl["selection"] == MERL_SELECTION and "MERL" in merl["metric"]
    assert merl["runs"][0]["merl_epoch"] != merl_shuffled["runs"][0]["merl_epoch"]
    # the max over epochs can only meet or beat the val-selected epoch of the same run
    assert merl["value"] >= merl["val_selected_value"] and merl["inflation"] >= 0
    assert merl_shuffled["inflation"] > 0


def test_fractions_repeat_with_seeds_and_report_spread(splits):
    train, val, test = splits
    r = probe_fraction(
        train, val, test, 10, repeats=3, epochs=10, weight_decays=(0.0,), bootstrap=100, progress=False
    )
    assert [x["seed"] for x in r["runs"]] == [0, 1, 2] and {x["n_train"] for x in r["runs"]} == {16}
    assert r["std"] > 0 and r["min"] <= r["value"] <= r["max"]
    assert r["interval"][0] <= r["value"] <= r["interval"][1]
    assert (
        set(r["per_class"]) == {"c0", "c1", "c2"}
        and r["per_class"]["c0"]["positives"] == test.targets[:, 0].sum()
    )


def test_subsets_ours_seeded_merls_train_test_split():
    a, b = subset(1000, 1, 0, False), subset(1000, 1, 1, False)
    assert len(a) == 10 and not np.array_equal(a, b) and np.array_equal(a, subset(1000, 1, 0, False))
    merl = subset(1000, 10, 123, True)  # MERL ignores the seed: random_state=42
    expect = np.sort(train_test_split(np.arange(1000), train_size=0.1, random_state=42)[0])
    assert np.array_equal(merl, expect) and len(subset(1000, 100, 0, True)) == 1000


def test_embeddings_are_cached_by_checkpoint_task_and_split(tmp_path, monkeypatch):
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    loaded = load_model(MODEL, ckpt)
    task = get_task("ludb-axis", LUDB_SHARDS)
    first = cached_split(loaded, task, "test", tmp_path / "cache", progress=False)
    files = list((tmp_path / "cache").glob("ludb-axis-test-*.npz"))
    assert len(files) == 1 and first.embeddings.shape == (50, 32) and first.targets.sum() == 50

    def fail(*a, **k):
        raise AssertionError("embedded again despite the cache")

    monkeypatch.setattr(zeroshot, "embed_split", fail)
    again = cached_split(loaded, task, "test", tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(again.embeddings, first.embeddings)
    assert again.keys == first.keys and np.array_equal(again.targets, first.targets)
    with pytest.raises(
        AssertionError, match="embedded again"
    ):  # another split (or checkpoint) is another key
        cached_split(loaded, task, "val", tmp_path / "cache", progress=False)
    np.load(files[0], allow_pickle=False)  # plain arrays, no pickles
    assert json.dumps(first.positives())


@pytest.mark.slow
def test_cli_linear_labels_merl_selection_in_every_output(tmp_path):
    from fgclep_plugin.cli import main

    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    base = ["eval", "linear", "--model", MODEL, "--checkpoint", f"CLEP={ckpt}", "--task", "ludb-axis"]
    base += [
        "--ludb-data",
        str(LUDB_SHARDS),
        "--fractions",
        "100",
        "--epochs",
        "3",
        "--bootstrap",
        "50",
        "--quiet",
    ]
    assert main([*base, "--out", str(tmp_path / "ours"), "--cache", str(tmp_path / "cache")]) == 0
    assert (
        main([*base, "--out", str(tmp_path / "merl"), "--cache", str(tmp_path / "cache"), "--merl-selection"])
        == 0
    )
    ours = json.loads((tmp_path / "ours" / "results.json").read_text())["rows"]
    merl = json.loads((tmp_path / "merl" / "results.json").read_text())["rows"]
    assert [r["selection"] for r in ours] == [VAL_SELECTION] and [r["selection"] for r in merl] == [
        MERL_SELECTION
    ]
    assert merl[0]["metric"] == "macro AUC (MERL selection)" and "inflation" in merl[0]
    md = (tmp_path / "merl" / "results.md").read_text()
    assert MERL_SELECTION in md and "| CLEP | ludb-axis | 100 % |" in md  # the inflation table
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 3  # train, val, test embedded once for both runs
