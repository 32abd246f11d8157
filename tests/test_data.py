"""ECG shard pipeline for open_clip training (fgclep_plugin.training.pipeline)."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from open_clip_train.params import parse_args

from fgclep_plugin.ecgdata.shards import encode_sample
from fgclep_plugin.training.pipeline import get_ecg_data, get_ecg_labelled_loader, get_ecg_wds_dataset

N_SHARDS, PER_SHARD = 3, 8


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def numbered_sample(i: int) -> tuple[str, dict[str, bytes]]:
    """Sample ``i``: ECG filled with ``i``, report ``record i``, label ``odd``/``even``."""
    ecg = np.full((12, 5000), i, dtype=np.float16)
    return f"rec{i:04d}", encode_sample(f"rec{i:04d}", ecg, f"record {i}", {"labels": {"parity": i % 2}})


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("shards")
    sizes = {}
    for s in range(N_SHARDS):
        write_tar(d / f"toy-{s:06d}.tar", [numbered_sample(s * PER_SHARD + j) for j in range(PER_SHARD)])
        sizes[f"toy-{s:06d}.tar"] = PER_SHARD
    (d / "sizes.json").write_text(json.dumps(sizes))
    return d


def number_tokenizer(texts):
    """Stand-in tokenizer: 'record 7' -> [[7]] (lets the test see which report travelled with which ECG)."""
    texts = [texts] if isinstance(texts, str) else texts
    return torch.tensor([[int(t.split()[-1])] for t in texts])


def first_value(x: torch.Tensor) -> torch.Tensor:
    """Stand-in transform: the ECG's constant value (its sample number) as a 1-element tensor."""
    assert x.dtype == torch.float32 and x.shape == (12, 5000)
    return x[:1, 0]


def make_args(*extra: str, world_size: int = 1, rank: int = 0):
    args = parse_args(["--batch-size", "4", "--workers", "0", *extra])
    args.world_size, args.rank, args.distributed = world_size, rank, world_size > 1
    return args


def epoch_batches(info, epoch: int) -> list[tuple[list[int], list[int]]]:
    info.set_epoch(epoch)
    out = []
    for ecg, tokens in info.dataloader:
        out.append((ecg[:, 0].long().tolist(), tokens[:, 0].tolist()))
    return out


def test_one_epoch_covers_every_sample_once_with_pairs_intact(shard_dir):
    urls = str(shard_dir / "toy-{000000..000002}.tar")
    info = get_ecg_wds_dataset(make_args("--train-data", urls), first_value, True, tokenizer=number_tokenizer)
    assert info.dataloader.num_samples == N_SHARDS * PER_SHARD  # from sizes.json
    assert info.dataloader.num_batches == N_SHARDS * PER_SHARD // 4
    batches = epoch_batches(info, 0)
    assert len(batches) == info.dataloader.num_batches
    ecg_ids = [i for b in batches for i in b[0]]
    assert ecg_ids == [i for b in batches for i in b[1]]  # each ECG travels with its own report
    assert sorted(ecg_ids) == list(range(N_SHARDS * PER_SHARD))


def test_epochs_are_shuffled_differently_and_reproducibly(shard_dir):
    urls = str(shard_dir / "toy-{000000..000002}.tar")
    orders = []
    for _ in range(2):
        info = get_ecg_wds_dataset(
            make_args("--train-data", urls), first_value, True, tokenizer=number_tokenizer
        )
        orders.append([[i for b in epoch_batches(info, e) for i in b[0]] for e in (0, 1)])
    (e0, e1), (again0, again1) = orders
    assert sorted(e0) == sorted(e1) == list(range(N_SHARDS * PER_SHARD))
    assert e0 != e1 and e0 != sorted(e0)
    assert (e0, e1) == (again0, again1)  # seeded by --seed and the epoch


@pytest.mark.parametrize("form", ["list", "brace", "pipe"])
def test_url_forms(shard_dir, form):
    shards = [str(shard_dir / f"toy-{s:06d}.tar") for s in range(N_SHARDS)]
    urls = {
        "list": "::".join(shards),
        "brace": str(shard_dir / "toy-{000000..000001}.tar") + "::" + shards[2],
        "pipe": "::".join(f"pipe:cat {s}" for s in shards),
    }[form]
    extra = ["--train-num-samples", "24"] if form == "pipe" else []  # no sizes.json for a command
    info = get_ecg_wds_dataset(
        make_args("--train-data", urls, *extra), first_value, True, tokenizer=number_tokenizer
    )
    assert sorted(i for b in epoch_batches(info, 0) for i in b[0]) == list(range(24))


def test_two_workers_split_shards(shard_dir):
    urls = str(shard_dir / "toy-{000000..000002}.tar")
    args = make_args("--train-data", urls, "--train-num-samples", "16")
    args.workers = 2
    info = get_ecg_wds_dataset(args, first_value, True, tokenizer=number_tokenizer)
    ids = [i for b in epoch_batches(info, 0) for i in b[0]]
    assert len(ids) == 16 and len(set(ids)) == 16  # 2 workers x 2 batches, no sample twice


def test_resampled_takes_train_num_samples(shard_dir):
    urls = str(shard_dir / "toy-{000000..000002}.tar")
    args = make_args("--train-data", urls, "--dataset-resampled", "--train-num-samples", "40")
    info = get_ecg_wds_dataset(args, first_value, True, tokenizer=number_tokenizer)
    assert info.dataloader.num_batches == 10
    batches = epoch_batches(info, 0)
    assert len(batches) == 10 and all(len(b[0]) == 4 for b in batches)
    assert all(0 <= i < 24 for b in batches for i in b[0])


def test_too_few_shards_for_workers_is_a_clear_error(shard_dir):
    args = make_args("--train-data", str(shard_dir / "toy-000000.tar"))
    args.workers = 2
    with pytest.raises(AssertionError, match="1 shard.*2 worker"):
        get_ecg_wds_dataset(args, first_value, True, tokenizer=number_tokenizer)


def test_deterministic_mode_gives_each_rank_its_half_of_the_global_batch(shard_dir, monkeypatch):
    urls = str(shard_dir / "toy-{000000..000002}.tar")
    single = make_args("--train-data", urls, "--batch-size", "8")
    single.ecg_deterministic_data = True
    whole = epoch_batches(get_ecg_wds_dataset(single, first_value, True, tokenizer=number_tokenizer), 0)
    assert [b[0] for b in whole] == [list(range(k * 8, k * 8 + 8)) for k in range(3)]
    halves = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        args = make_args("--train-data", urls, world_size=2, rank=rank)
        args.ecg_deterministic_data = True
        info = get_ecg_wds_dataset(args, first_value, True, tokenizer=number_tokenizer)
        assert info.dataloader.num_batches == 3
        halves.append(epoch_batches(info, 0))
    assert [a[0] + b[0] for a, b in zip(*halves)] == [b[0] for b in whole]


def test_bad_sample_is_skipped_with_a_warning_naming_it(tmp_path, caplog):
    good = [numbered_sample(i) for i in range(4)]
    broken = ("rec_broken", {**numbered_sample(99)[1], "npy": b"not an npy file"})
    write_tar(tmp_path / "bad-000000.tar", good[:2] + [broken] + good[2:])
    args = make_args("--val-data", str(tmp_path / "bad-000000.tar"))
    info = get_ecg_wds_dataset(args, first_value, False, tokenizer=number_tokenizer)
    with caplog.at_level(logging.WARNING):
        ids = [i for b in epoch_batches(info, 0) for i in b[0]]
    assert ids == [0, 1, 2, 3]
    assert "rec_broken" in caplog.text


def test_val_keeps_partial_batch_and_order(shard_dir):
    args = make_args("--val-data", str(shard_dir / "toy-{000000..000001}.tar"), "--batch-size", "5")
    info = get_data_val(args)
    assert info.dataloader.num_samples == 16
    batches = epoch_batches(info, 0)
    assert [len(b[0]) for b in batches] == [5, 5, 5, 1]
    assert [i for b in batches for i in b[0]] == list(range(16))


def get_data_val(args):
    data = get_ecg_data(args, (first_value, first_value), tokenizer=number_tokenizer)
    assert set(data) == {"val"}
    return data["val"]


def test_image_benchmark_flags_are_refused(shard_dir):
    args = make_args("--train-data", str(shard_dir / "toy-000000.tar"), "--imagenet-val", "/x")
    with pytest.raises(ValueError, match="imagenet-val.*ecg-zeroshot-data"):
        get_ecg_data(args, (first_value, first_value), tokenizer=number_tokenizer)


def test_labelled_loader_keeps_order_and_labels(shard_dir):
    loader = get_ecg_labelled_loader(
        str(shard_dir / "toy-000001.tar"), first_value, 3, label_fn=lambda meta: meta["labels"]["parity"]
    )
    batches = list(loader)
    ids = [int(v) for ecg, _ in batches for v in ecg[:, 0]]
    labels = [lab for _, labs in batches for lab in labs]
    assert ids == list(range(8, 16))
    assert labels == [i % 2 for i in ids]


def test_unknown_training_size_is_a_clear_error(shard_dir):
    urls = "::".join(f"pipe:cat {shard_dir / f'toy-{s:06d}.tar'}" for s in range(N_SHARDS))
    with pytest.raises(RuntimeError, match="sizes.json beside the shards or pass --train-num-samples"):
        get_ecg_wds_dataset(make_args("--train-data", urls), first_value, True, tokenizer=number_tokenizer)


def resampled_shard_urls(info, epoch: int, n: int = 40) -> list[str]:
    """The first ``n`` shards ``--dataset-resampled`` draws in ``epoch`` (the pipeline's first stage)."""
    import itertools

    info.set_epoch(epoch)
    stage = info.dataloader.pipeline[0].dataset.pipeline[0]
    return [s["url"] for s in itertools.islice(iter(stage), n)]


def test_resampled_shards_differ_per_epoch_and_follow_seed_with_workers_0(shard_dir):
    """open_clip's default resampling seed ignores the epoch without dataloader workers (rank*1000 + worker):
    every epoch would draw the same shard sequence."""
    urls = str(shard_dir / "toy-{000000..000002}.tar")

    def draws(seed: str) -> tuple[list[str], list[str]]:
        args = make_args(
            "--train-data", urls, "--dataset-resampled", "--train-num-samples", "40", "--seed", seed
        )
        info = get_ecg_wds_dataset(args, first_value, True, tokenizer=number_tokenizer)
        return resampled_shard_urls(info, 0), resampled_shard_urls(info, 1)

    e0, e1 = draws("0")
    assert len(set(e0)) == N_SHARDS and e0 != e1
    assert draws("0") == (e0, e1)  # reproducible
    assert draws("1")[0] != e0  # and seeded by --seed


def test_sizes_json_of_each_directory_in_a_joined_set(shard_dir, tmp_path):
    """``a/x-{..}.tar::b/y-{..}.tar``: each shard's size comes from the sizes.json beside it (open_clip reads
    only the first shard's directory and fails with a bare KeyError on the second's shard names)."""
    write_tar(tmp_path / "other-000000.tar", [numbered_sample(100 + j) for j in range(5)])
    (tmp_path / "sizes.json").write_text(json.dumps({"other-000000.tar": 5}))
    urls = str(shard_dir / "toy-{000000..000002}.tar") + "::" + str(tmp_path / "other-000000.tar")
    info = get_ecg_wds_dataset(make_args("--train-data", urls), first_value, True, tokenizer=number_tokenizer)
    assert info.dataloader.num_batches == 8  # 24 + 5 = 29 samples -> ceil(29 / 4) batches (6 with 24)
    (tmp_path / "sizes.json").write_text(json.dumps({"elsewhere.tar": 5}))
    with pytest.raises(RuntimeError, match="other-000000.tar.*sizes.json"):
        get_ecg_wds_dataset(make_args("--train-data", urls), first_value, True, tokenizer=number_tokenizer)


def test_too_few_shards_for_processes_without_workers_is_a_clear_error(shard_dir):
    """--workers 0 still reads in one process per rank: a rank left without a shard would yield no batch and
    leave the others waiting in the first gradient all-reduce."""
    args = make_args("--train-data", str(shard_dir / "toy-{000000..000001}.tar"), world_size=3)
    with pytest.raises(AssertionError, match="2 shard.*1 worker.*3 process"):
        get_ecg_wds_dataset(args, first_value, True, tokenizer=number_tokenizer)


def test_second_pass_within_an_epoch_is_shuffled_anew(shard_dir):
    """When an epoch asks for more samples than a reader's shards hold, webdataset re-reads them; the re-read
    must not replay the first pass's order (every batch of the first pass would come back identical)."""
    urls = str(shard_dir / "toy-{000000..000002}.tar")
    args = make_args("--train-data", urls, "--train-num-samples", str(2 * N_SHARDS * PER_SHARD))
    info = get_ecg_wds_dataset(args, first_value, True, tokenizer=number_tokenizer)
    ids = [i for b in epoch_batches(info, 0) for i in b[0]]
    first, second = ids[: N_SHARDS * PER_SHARD], ids[N_SHARDS * PER_SHARD :]
    assert sorted(first) == sorted(second) == list(range(N_SHARDS * PER_SHARD))
    assert first != second
    again = get_ecg_wds_dataset(args, first_value, True, tokenizer=number_tokenizer)
    assert [i for b in epoch_batches(again, 0) for i in b[0]] == ids  # still reproducible


def test_sample_the_transform_rejects_is_skipped_with_a_warning_naming_it(tmp_path, caplog):
    from fgclep_plugin.model.tower import EcgTowerCfg
    from fgclep_plugin.model.transform import EcgTransform

    nan_ecg = np.full((12, 5000), np.nan, dtype=np.float16)
    nan_sample = ("rec_nan", encode_sample("rec_nan", nan_ecg, "record 99", {"labels": {}}))
    write_tar(tmp_path / "nan-000000.tar", [numbered_sample(0), nan_sample, numbered_sample(1)])
    transform = EcgTransform(EcgTowerCfg(arch="resnet1d18", width=8))
    args = make_args("--val-data", str(tmp_path / "nan-000000.tar"))
    info = get_ecg_wds_dataset(args, transform, False, tokenizer=number_tokenizer)
    with caplog.at_level(logging.WARNING):
        batches = list(info.dataloader)
    assert sum(len(b[0]) for b in batches) == 2
    assert "rec_nan" in caplog.text and "non-finite" in caplog.text
