"""ECG zero-shot AUC (fgclep_plugin.model.zeroshot) and training's zero-shot hook (fgclep_plugin.training.zeroshot)."""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from fgclep_plugin.ecgdata.labels import labels_from_meta
from fgclep_plugin.model.registry import register
from fgclep_plugin.model.zeroshot import ECG_TEMPLATES, macro_auc, zero_shot_auc
from fgclep_plugin.training.zeroshot import DATA_KEY, ZeroShotData, ecg_zero_shot_eval, get_zero_shot_data

ROOT = Path(__file__).resolve().parents[1]
LUDB_TEST = str(ROOT / "shards" / "ludb" / "ludb-test-000000.tar")


def test_labels_from_meta_forms_and_errors():
    meta = {
        "record_id": "r7",
        "labels": {
            "dx": ["AF", "LBBB"],
            "rhythm": "Sinus rhythm",
            "flags": {"MI": True, "NORM": False, "HYP": None},
            "binary": {"AF": 1, "MI": 0, "STTC": 0.0, "HYP": 1.0},  # a {name: 0/1} table: the 0s are absent
            "empty": [],
            "bad": 3,
        },
    }
    assert labels_from_meta(meta, "dx") == ["AF", "LBBB"]
    assert labels_from_meta(meta, "rhythm") == ["Sinus rhythm"]
    assert labels_from_meta(meta, "flags") == ["MI"]
    assert labels_from_meta(meta, "binary") == ["AF", "HYP"]
    assert labels_from_meta(meta, "empty") == [] and labels_from_meta(meta, "missing") == []
    with pytest.raises(ValueError, match="record r7: labels\\['bad'\\] is int"):
        labels_from_meta(meta, "bad")


def test_macro_auc_skips_classes_with_one_outcome():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.5], [0.7, 0.3, 0.5], [0.1, 0.4, 0.5]])
    targets = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 1], [0, 0, 1]])
    out = macro_auc(scores, targets, ["a", "b", "c"])
    assert out["skipped"] == ["c"]
    assert out["per_class"]["a"] == 1.0
    assert out["per_class"]["b"] == pytest.approx(roc_auc_score(targets[:, 1], scores[:, 1]))
    assert out["auc"] == pytest.approx((1.0 + out["per_class"]["b"]) / 2)


class OracleModel(torch.nn.Module):
    """ECG embedding = its first sample value as a one-hot over 3 classes; text embedding = the class named."""

    names = ("alpha", "beta", "gamma")

    def encode_image(self, x, normalize=False):
        return F.one_hot(x[:, 0, 0].long(), 3).float()

    def encode_text(self, tokens, normalize=False):
        return F.one_hot(tokens[:, 0], 3).float() + 0.01


def oracle_tokenizer(texts):
    return torch.tensor([[next(i for i, n in enumerate(OracleModel.names) if n in t)] for t in texts])


def test_zero_shot_auc_is_perfect_for_an_oracle_and_chance_for_shuffled_labels():
    ecgs = torch.zeros(30, 12, 10)
    cls = torch.arange(30) % 3
    ecgs[:, 0, 0] = cls.float()
    labels = [[OracleModel.names[c]] for c in cls]
    loader = [(ecgs[:15], labels[:15]), (ecgs[15:], labels[15:])]
    out = zero_shot_auc(OracleModel(), oracle_tokenizer, loader)
    assert out["class_names"] == list(OracleModel.names) and out["n_samples"] == 30
    assert out["auc"] == 1.0
    wrong = [[OracleModel.names[(c + 1) % 3]] for c in cls]  # every label off by one class
    assert zero_shot_auc(OracleModel(), oracle_tokenizer, [(ecgs, wrong)])["auc"] < 0.5


def test_unlabelled_samples_are_dropped_by_default_and_counted():
    """Samples with no label for the key (PTB-XL records without a superclass) are not negatives of every class:
    the benchmark protocol drops them. ``drop_unlabelled=False`` keeps them as negatives."""
    ecgs = torch.zeros(9, 12, 10)
    ecgs[:, 0, 0] = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 0]).float()
    # 3 unlabelled ECGs that look like 'alpha': as negatives they would lower alpha's AUC
    labels = [["alpha"], ["beta"], ["gamma"], ["alpha"], ["beta"], ["gamma"], [], [], []]
    out = zero_shot_auc(OracleModel(), oracle_tokenizer, [(ecgs, labels)])
    assert (out["auc"], out["n_samples"], out["n_unlabelled"]) == (1.0, 6, 3)
    kept = zero_shot_auc(OracleModel(), oracle_tokenizer, [(ecgs, labels)], drop_unlabelled=False)
    assert (kept["n_samples"], kept["n_unlabelled"]) == (9, 3)
    y = np.array([1, 0, 0, 1, 0, 0, 0, 0, 0])
    assert kept["per_class"]["alpha"] == pytest.approx(roc_auc_score(y, (ecgs[:, 0, 0] == 0).numpy()))
    assert kept["per_class"]["alpha"] < 1.0
    with pytest.raises(ValueError, match="no sample has a label"):
        zero_shot_auc(OracleModel(), oracle_tokenizer, [(ecgs[6:], labels[6:])])


def test_training_hook_drops_unlabelled_unless_the_flag_keeps_them(caplog):
    from fgclep_plugin.train import split_argv

    ecgs = torch.zeros(4, 12, 10)
    ecgs[:, 0, 0] = torch.tensor([0, 1, 0, 0]).float()
    data = {DATA_KEY: ZeroShotData([(ecgs, [["alpha"], ["beta"], [], []])])}
    plugin, _ = split_argv([])
    run = Namespace(
        **vars(plugin), zeroshot_frequency=1, epochs=1, model="unused", device="cpu", precision="fp32"
    )
    with caplog.at_level("INFO", logger="fgclep_plugin.training.zeroshot"):
        out = ecg_zero_shot_eval(OracleModel(), data, 1, run, tokenizer=oracle_tokenizer)
    assert out["ecg-zeroshot-auc"] == 1.0 and out["ecg-zeroshot-unlabelled"] == 2.0
    assert "2 samples without a label dropped" in caplog.text
    plugin, _ = split_argv(["--ecg-zeroshot-keep-unlabelled"])
    run = Namespace(
        **vars(plugin), zeroshot_frequency=1, epochs=1, model="unused", device="cpu", precision="fp32"
    )
    with caplog.at_level("INFO", logger="fgclep_plugin.training.zeroshot"):
        out = ecg_zero_shot_eval(OracleModel(), data, 1, run, tokenizer=oracle_tokenizer)
    assert out["ecg-zeroshot-auc"] < 1.0 and "2 samples without a label counted as negatives" in caplog.text


def test_zero_shot_auc_matches_an_independent_computation_on_ludb():
    register()
    model, _, preprocess = open_clip.create_model_and_transforms("FGCLEP-Tiny")
    tokenizer = open_clip.get_tokenizer("FGCLEP-Tiny")
    zs = get_zero_shot_data(LUDB_TEST, preprocess, "Rhythms", batch_size=16)
    out = zero_shot_auc(model, tokenizer, zs.dataloader, templates=ECG_TEMPLATES)

    batches = list(zs.dataloader)
    ecgs = torch.cat([b[0] for b in batches])
    labels = [lab for b in batches for lab in b[1]]
    assert len(labels) == 50 == out["n_samples"]
    names = sorted({c for lab in labels for c in lab})
    assert out["class_names"] == names and "Sinus rhythm" in names
    model.eval()
    with torch.no_grad():
        e = F.normalize(model.encode_image(ecgs), dim=-1)
        class_emb = []
        for n in names:
            t = F.normalize(
                model.encode_text(tokenizer([tpl.format(n) for tpl in ECG_TEMPLATES])), dim=-1
            ).mean(0)
            class_emb.append(F.normalize(t, dim=0))
        scores = (e @ torch.stack(class_emb).T).numpy()
    aucs = []
    for c, n in enumerate(names):
        y = np.array([n in lab for lab in labels], dtype=int)
        if 0 < y.sum() < len(y):
            aucs.append(roc_auc_score(y, scores[:, c]))
            assert out["per_class"][n] == pytest.approx(aucs[-1], abs=1e-6)
    assert out["auc"] == pytest.approx(np.mean(aucs), abs=1e-6)


def test_training_hook_runs_on_open_clip_schedule():
    ecgs = torch.zeros(6, 12, 10)
    ecgs[:, 0, 0] = torch.tensor([0, 1, 2, 0, 1, 2]).float()
    labels = [[OracleModel.names[int(v)]] for v in ecgs[:, 0, 0]]
    data = {DATA_KEY: ZeroShotData([(ecgs, labels)])}
    args = Namespace(
        zeroshot_frequency=2, epochs=5, model="unused", device="cpu", precision="fp32", distributed=False
    )
    assert ecg_zero_shot_eval(OracleModel(), data, 1, args, tokenizer=oracle_tokenizer) == {}
    assert ecg_zero_shot_eval(OracleModel(), data, 2, args, tokenizer=oracle_tokenizer) == {
        "ecg-zeroshot-auc": 1.0,
        "ecg-zeroshot-classes": 3.0,
        "ecg-zeroshot-unlabelled": 0.0,
    }
    assert (
        ecg_zero_shot_eval(OracleModel(), data, 5, args, tokenizer=oracle_tokenizer)["ecg-zeroshot-auc"]
        == 1.0
    )
    assert ecg_zero_shot_eval(OracleModel(), {}, 2, args, tokenizer=oracle_tokenizer) == {}


def test_prompt_file_maps_label_codes_to_prompt_text(tmp_path):
    """Label codes (PTB-XL's NORM/MI/STTC, SNOMED numbers) mean nothing to a text tower: ``--ecg-zeroshot-prompts``
    maps each code to the words put into the templates, through the training hook."""
    import json

    from fgclep_plugin.train import split_argv
    from fgclep_plugin.training.hooks import _hook_get_data

    codes = {"a1": "alpha", "b2": "beta", "c3": "gamma"}
    prompt_file = tmp_path / "prompts.json"
    prompt_file.write_text(json.dumps(codes))
    plugin, _ = split_argv(
        [
            "--ecg-zeroshot-data", LUDB_TEST, "--ecg-zeroshot-prompts", str(prompt_file),
            "--ecg-zeroshot-label-key", "Rhythms",
            "--ecg-zeroshot-classes", "b2, c3",
        ]
    )  # fmt: skip
    args = Namespace(**vars(plugin), train_data=None, val_data=None, batch_size=4, dataset_type="auto")
    zs = _hook_get_data(args, (None, None))[DATA_KEY]
    assert zs.class_names == ["b2", "c3"]  # spaces after commas are not part of the names
    assert [zs.prompt_text(c) for c in ("a1", "c3", "Sinus_rhythm")] == ["alpha", "gamma", "Sinus rhythm"]

    ecgs = torch.zeros(6, 12, 10)
    ecgs[:, 0, 0] = torch.tensor([0, 1, 2, 0, 1, 2]).float()
    labels = [[list(codes)[int(v)]] for v in ecgs[:, 0, 0]]
    data = {DATA_KEY: ZeroShotData([(ecgs, labels)], prompt_text=zs.prompt_text)}
    run = Namespace(zeroshot_frequency=1, epochs=1, model="unused", device="cpu", precision="fp32")
    assert (
        ecg_zero_shot_eval(OracleModel(), data, 1, run, tokenizer=oracle_tokenizer)["ecg-zeroshot-auc"] == 1.0
    )


def test_prompt_file_errors_name_the_file(tmp_path):
    from fgclep_plugin.model.zeroshot import load_prompt_map

    bad = tmp_path / "p.json"
    bad.write_text('["NORM"]')
    with pytest.raises(ValueError, match=r"p\.json.*class name.*prompt text"):
        load_prompt_map(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"p\.json"):
        load_prompt_map(bad)


def test_training_setup_rejects_a_zero_shot_label_key_the_shards_lack():
    """A typo in --ecg-zeroshot-label-key used to surface only at the first evaluation, after a whole epoch
    of training (and before that epoch's checkpoint is written)."""
    from fgclep_plugin.train import split_argv
    from fgclep_plugin.training.hooks import _hook_get_data

    plugin, _ = split_argv(["--ecg-zeroshot-data", LUDB_TEST, "--ecg-zeroshot-label-key", "Rhythm"])
    args = Namespace(**vars(plugin), train_data=None, val_data=None, batch_size=4, dataset_type="auto")
    with pytest.raises(ValueError, match=r"ludb-test-000000.tar.*'Rhythm'.*'Rhythms'"):
        _hook_get_data(args, (None, None))
    args.ecg_zeroshot_data = str(Path(LUDB_TEST).parent / "no-such-000000.tar")
    with pytest.raises((ValueError, FileNotFoundError), match="no-such-000000.tar"):
        _hook_get_data(args, (None, None))
    args.ecg_zeroshot_data, args.ecg_zeroshot_label_key = LUDB_TEST, "Rhythms"
    assert DATA_KEY in _hook_get_data(args, (None, None))
