"""Where an embedding command runs: device choice by LOCAL_RANK, each process's part of the shards, the
DataLoader workers of ``embed_shards`` (same embeddings in shard order), the device a command chooses and
records."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from eval_helpers import LUDB_SHARDS, LUDB_TEST

from fgclep_plugin.cli import main
from fgclep_plugin.model.device import choose_device, process_part
from fgclep_plugin.model.scoring import embed_shards, load_model


def test_choose_device_takes_the_gpu_of_local_rank(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_device("auto") == torch.device("cuda", 1)
    assert choose_device(None) == torch.device("cuda", 1)
    assert choose_device("cuda") == torch.device("cuda", 1)  # one GPU per launched process
    assert choose_device("cuda:0") == torch.device("cuda", 0)  # an explicit index wins
    assert choose_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device("auto") == torch.device("cpu")


def test_process_part_slices_by_rank_and_world_size(monkeypatch):
    shards = [f"s-{i:02d}.tar" for i in range(7)]
    parts = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        parts.append(process_part(shards))
    assert parts[1] == ["s-01.tar", "s-04.tar"]
    assert sorted(s for p in parts for s in p) == shards  # disjoint, and together every shard
    assert process_part(shards, 0, 1) == shards
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(ValueError, match="RANK 3"):
        process_part(shards)


def test_embed_shards_with_workers_gives_the_main_process_embeddings_in_shard_order(tmp_path, ckpt):
    for i in range(3):
        shutil.copyfile(LUDB_TEST, tmp_path / f"set-{i:06d}.tar")
    urls = str(tmp_path / "set-{000000..000002}.tar")
    lm = load_model("FGCLEP-Tiny", ckpt)
    one = embed_shards(lm, LUDB_TEST, batch_size=7)
    lm.workers = 0
    main_process = embed_shards(lm, urls, batch_size=7)
    lm.workers = 2  # worker 0 reads shards 0 and 2, worker 1 shard 1: batches arrive interleaved
    workers = embed_shards(lm, urls, batch_size=7)
    assert workers.keys == main_process.keys == one.keys * 3
    assert workers.texts == one.texts * 3 and workers.metas == one.metas * 3
    np.testing.assert_allclose(workers.embeddings, main_process.embeddings, atol=1e-6)
    np.testing.assert_allclose(workers.embeddings, np.tile(one.embeddings, (3, 1)), atol=1e-6)


def test_retrieve_records_the_cpu_when_cuda_is_hidden(tmp_path, ckpt, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["retrieve", "--data", LUDB_TEST, "--model", "FGCLEP-Tiny", "--checkpoint", ckpt, "--k", "3"]
    assert main([*argv, "--plot-k", "0", "--quiet", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "retrieval.json").read_text())
    assert result["device"] == "cpu" and result["precision"] == "fp32"


def test_training_zero_shot_hook_scores_on_the_gpu_of_its_process(monkeypatch):
    from types import SimpleNamespace

    from fgclep_plugin.training import zeroshot as hook

    seen = {}

    def fake_auc(model, tokenizer, loader, **kw):
        seen.update(kw)
        return {
            "auc": 0.5,
            "per_class": {},
            "skipped": [],
            "outside_labels": {},
            "n_samples": 1,
            "n_unlabelled": 0,
        }

    monkeypatch.setattr(hook, "zero_shot_auc", fake_auc)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    args = SimpleNamespace(
        zeroshot_frequency=1, epochs=1, device="cuda", precision="amp", model="FGCLEP-Tiny"
    )
    data = {hook.DATA_KEY: hook.ZeroShotData([])}
    assert (
        hook.ecg_zero_shot_eval(torch.nn.Linear(1, 1), data, 1, args, tokenizer=str)["ecg-zeroshot-auc"]
        == 0.5
    )
    assert seen["device"] == torch.device("cuda", 1) and seen["precision"] == "amp"


def test_eval_embedding_under_a_launcher_gathers_the_parts_in_shard_order(tmp_path, ckpt, monkeypatch):
    from fgclep_plugin.evaluate import zeroshot
    from fgclep_plugin.model import gather
    from fgclep_plugin.model.scoring import EmbeddedShards

    for i in range(3):
        shutil.copyfile(LUDB_TEST, tmp_path / f"set-{i:06d}.tar")
    shards = [str(tmp_path / f"set-{i:06d}.tar") for i in range(3)]
    lm = load_model("FGCLEP-Tiny", ckpt)
    whole = zeroshot.embed_shards(lm, shards, batch_size=16, progress=False)  # one process
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    got: list[EmbeddedShards] = []

    def fake_all_gather(part):  # process 1's part computed here, as the gloo group would bring it
        got.append(part)
        other = embed_shards(lm, process_part(shards, 1, 2), 16, keep_meta=zeroshot.label_meta)
        return [part, other]

    monkeypatch.setattr(gather, "all_gather", fake_all_gather)
    merged = zeroshot.embed_shards(lm, shards, batch_size=16, progress=False)
    assert got[0].shard_sizes == [50, 50]  # process 0 embedded shards 0 and 2 only
    assert merged.keys == whole.keys and merged.metas == whole.metas and merged.shard_sizes == [50, 50, 50]
    np.testing.assert_allclose(merged.embeddings, whole.embeddings, atol=1e-6)


def _eval_argv(out) -> list[str]:
    return ["eval", "zeroshot", "--model", "FGCLEP-Tiny", "--checkpoint", "none", "--task", "ludb-rhythm",
            "--ludb-data", str(LUDB_SHARDS), "--no-cache", "--bootstrap", "5", "--quiet", "--out", str(out)]  # fmt: skip


def _augment_argv(tmp_path, ckpt) -> list[str]:
    cache = tmp_path / "cands"
    generate = ["features", "generate", "--data", LUDB_TEST, "--cache", str(cache), "--backend", "kb"]
    assert main([*generate, "--quiet"]) == 0
    return ["augment", "--data", LUDB_TEST, "--out", str(tmp_path / "aug" / "a-%06d.tar"), "--cache", str(cache),
            "--model", "FGCLEP-Tiny", "--checkpoint", ckpt, "--quiet",
            "--summary-json", str(tmp_path / "summary.json")]  # fmt: skip


@pytest.mark.parametrize("command", ["eval", "augment"])
def test_eval_and_augment_choose_the_device_and_record_it(command, tmp_path, ckpt, monkeypatch, capsys):
    """The default ``--device auto`` asks torch: CUDA reported available makes the command go to cuda:0 (which
    fails here, naming the driver or CUDA build), CUDA hidden makes it run on the CPU and record that."""
    argv = _eval_argv(tmp_path / "eval") if command == "eval" else _augment_argv(tmp_path, ckpt)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("nvidia" in err.lower() or "cuda" in err.lower()), err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(argv) == 0, capsys.readouterr().err
    if command == "eval":
        rows = json.loads((tmp_path / "eval" / "results.json").read_text())["rows"]
        assert rows and {r["device"] for r in rows} == {"cpu"}
    else:
        summary = json.loads((tmp_path / "summary.json").read_text())
        assert summary["device"] == "cpu" and summary["samples"] == 50
