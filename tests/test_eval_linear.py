"""Linear probe: selection never reads test labels (MERL's selection does), fractions and repeats; the embedding
cache: one pass per (checkpoint, shard set) whatever the number of tasks, in memory and on disk."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace

import numpy as np
import pytest
from eval_helpers import LUDB_SHARDS, MODEL, clustered_split, tiny_checkpoint
from sklearn.model_selection import train_test_split

from fgclep_plugin.ecgdata.reader import iter_samples
from fgclep_plugin.evaluate import zeroshot
from fgclep_plugin.evaluate.linear import MERL_SELECTION, VAL_SELECTION, probe_fraction, subset
from fgclep_plugin.evaluate.tasks import LUDB_CLASSES, get_task
from fgclep_plugin.evaluate.zeroshot import EmbeddedSplit, cache_key, cached_split, embed_split
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


def independent_targets(task, split):
    """Keys and 0/1 targets of ``task``'s ``split`` straight from the sample metas, and the unlabelled count."""
    keys, rows, unlabelled = [], [], 0
    for s in iter_samples(task.urls(split)):
        labels = task.labels(s["meta"])
        if labels is None:
            unlabelled += 1
            continue
        keys.append(s["__key__"])
        rows.append([int(c in labels) for c in task.class_names])
    return keys, np.array(rows), unlabelled


def test_two_tasks_on_the_same_shards_embed_once_with_their_own_targets(tmp_path, embed_counter):
    loaded = load_model(MODEL, tiny_checkpoint(tmp_path / "m.pt"))
    names = ("ludb-rhythm", "ludb-axis", "ludb-hypertrophy")
    out = {n: cached_split(loaded, get_task(n, LUDB_SHARDS), "test", None, progress=False) for n in names}
    assert embed_counter == [50]  # one pass of the 50 test ECGs for three tasks, without a disk cache
    alone = embed_split(loaded, get_task("ludb-rhythm", LUDB_SHARDS), "test", progress=False)
    for name, split in out.items():
        keys, targets, unlabelled = independent_targets(get_task(name, LUDB_SHARDS), "test")
        assert split.keys == keys and np.array_equal(split.targets, targets), name
        assert split.n_unlabelled == unlabelled and split.class_names == LUDB_CLASSES[name]
        by_key = dict(zip(alone.keys, alone.embeddings))
        np.testing.assert_allclose(split.embeddings, np.stack([by_key[k] for k in split.keys]), atol=1e-6)
    assert len({t.targets.shape[1] for t in out.values()}) == 3  # really different tasks


def test_disk_cache_is_shared_by_tasks_and_keyed_by_checkpoint_and_shards(tmp_path, embed_counter):
    ckpt = tiny_checkpoint(tmp_path / "m.pt")
    cache = tmp_path / "cache"
    rhythm, axis = get_task("ludb-rhythm", LUDB_SHARDS), get_task("ludb-axis", LUDB_SHARDS)
    first = {
        t.name: cached_split(load_model(MODEL, ckpt), t, "test", cache, progress=False)
        for t in (rhythm, axis)
    }
    files = list(cache.glob("*.npz"))
    assert embed_counter == [50] and [f.name.split("-")[:3] for f in files] == [["ludb", "test", "000000"]]
    assert cache_key(load_model(MODEL, ckpt), rhythm, "test") == cache_key(
        load_model(MODEL, ckpt), axis, "test"
    )
    with np.load(files[0], allow_pickle=False) as z:  # plain arrays and JSON text, no pickles
        assert sorted(z.files) == ["embeddings", "keys", "metas"] and len(json.loads(str(z["metas"]))) == 50

    zeroshot.clear_memo()  # a new process: only the disk cache is left
    loaded = load_model(MODEL, ckpt)
    again = {t.name: cached_split(loaded, t, "test", cache, progress=False) for t in (rhythm, axis)}
    assert embed_counter == [50]  # read from disk, not embedded
    for name, a in first.items():
        b = again[name]
        np.testing.assert_array_equal(b.embeddings, a.embeddings)
        assert b.keys == a.keys and np.array_equal(b.targets, a.targets) and b.n_unlabelled == a.n_unlabelled
    assert json.dumps(again["ludb-axis"].positives())

    tiny_checkpoint(tmp_path / "m.pt", seed=1)  # the same path, other weights: another key
    changed = cached_split(load_model(MODEL, ckpt), rhythm, "test", cache, progress=False)
    assert embed_counter == [50, 50] and len(list(cache.glob("*.npz"))) == 2
    assert not np.allclose(changed.embeddings, first["ludb-rhythm"].embeddings)


def test_a_changed_shard_is_embedded_again(tmp_path, embed_counter):
    shard = tmp_path / "ludb-test-000000.tar"
    shutil.copyfile(LUDB_SHARDS / "ludb-test-000000.tar", shard)
    task = replace(get_task("ludb-rhythm", LUDB_SHARDS), splits={"test": str(shard)})
    loaded = load_model(MODEL, tiny_checkpoint(tmp_path / "m.pt"))
    cache = tmp_path / "cache"
    cached_split(loaded, task, "test", cache, progress=False)
    cached_split(loaded, task, "test", cache, progress=False)
    assert embed_counter == [50]
    st = shard.stat()
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: the memo and the disk key miss
    cached_split(loaded, task, "test", cache, progress=False)
    assert embed_counter == [50, 50] and len(list(cache.glob("*.npz"))) == 2


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
