"""Training entry point: open_clip_train's loop with the plugin's hooks (in-process, one CPU process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import open_clip_train.main as oc_main
import open_clip_train.train as oc_train
import pytest
import torch
from train_helpers import LUDB_TEST, LUDB_ZEROSHOT, tiny_run_argv

from fgclep_plugin.ecgdata.reader import iter_samples
from fgclep_plugin.model.registry import register
from fgclep_plugin.train import check_injection, main, split_argv
from fgclep_plugin.training.hooks import training_hooks


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


def test_plugin_flags_are_split_off_and_defaults_match_the_loss():
    plugin, rest = split_argv(
        [
            "--model",
            "FGCLEP-Tiny",
            "--fnm-lambda",
            "0.25",
            "--no-fnm-detach",
            "--ecg-zeroshot-data",
            "x.tar",
            "--batch-size",
            "4",
            "--init-logit-bias",
            "-5",
        ]
    )
    assert rest == ["--model", "FGCLEP-Tiny", "--batch-size", "4"]
    assert (plugin.fnm_lambda, plugin.fnm_detach, plugin.fnm_global) == (0.25, False, True)
    assert plugin.init_logit_bias == -5 and plugin.ecg_zeroshot_data == "x.tar"
    defaults, _ = split_argv([])
    assert (defaults.fnm_lambda, defaults.fnm_detach, defaults.fnm_global) == (0.5, True, True)


def test_hooks_are_installed_only_inside_the_context():
    register()
    before = (
        oc_main.get_data,
        oc_main.create_loss,
        oc_train.zero_shot_eval,
        torch.nn.parallel.DistributedDataParallel,
    )
    plugin, _ = split_argv([])
    with training_hooks(plugin):
        assert oc_main.get_data is not before[0] and oc_train.zero_shot_eval is not before[2]
        assert issubclass(torch.nn.parallel.DistributedDataParallel, before[3])
    assert (
        oc_main.get_data,
        oc_main.create_loss,
        oc_train.zero_shot_eval,
        torch.nn.parallel.DistributedDataParallel,
    ) == before


def test_cpu_module_can_be_wrapped_in_ddp_the_way_open_clip_does(tmp_path):
    """open_clip passes device_ids=[cpu device]; plain DDP refuses that, the hooked class accepts it."""
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1
    )
    try:
        plain = torch.nn.parallel.DistributedDataParallel
        with pytest.raises(ValueError, match="device_ids"):
            plain(torch.nn.Linear(2, 2), device_ids=[torch.device("cpu")])
        with training_hooks(split_argv([])[0]):
            ddp = torch.nn.parallel.DistributedDataParallel(
                torch.nn.Linear(2, 2), device_ids=[torch.device("cpu")]
            )
        assert ddp(torch.ones(1, 2)).shape == (1, 2)
    finally:
        torch.distributed.destroy_process_group()


def train_argv(logs: Path, *extra: str) -> list[str]:
    return [
        *tiny_run_argv(logs, "run", 24, 8),
        *LUDB_ZEROSHOT,
        "--init-logit-bias",
        "-4",
        *extra,
    ]


def embed(model, ecgs: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return model.encode_image(ecgs), model.encode_text(tokens)


def test_train_checkpoint_reload_and_resume_latest(tmp_path):
    """FGCLEP-Tiny on LUDB through open_clip_train: checkpoint -> pretrained= reload -> --resume latest."""
    import logging

    levels_before = (logging.root.level, len(logging.root.handlers), logging.getLogger("torch").level)
    assert main(train_argv(tmp_path, "--epochs", "1")) is None
    # open_clip's setup_logging turned every logger to INFO; the entry point restores them on return
    assert (logging.root.level, len(logging.root.handlers), logging.getLogger("torch").level) == levels_before
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt = torch.load(ckpt_dir / "epoch_1.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1
    assert ckpt["state_dict"]["logit_bias"].item() != -4.0  # trained from the --init-logit-bias value
    assert abs(ckpt["state_dict"]["logit_bias"].item() + 4.0) < 0.1
    params = (tmp_path / "run" / "params.txt").read_text()
    assert "fnm_lambda: 0.5" in params and "ecg_zeroshot_label_key: Rhythms" in params
    metrics = [json.loads(line) for line in (ckpt_dir / "results.jsonl").read_text().splitlines()]
    assert 0.0 <= metrics[-1]["ecg-zeroshot-auc"] <= 1.0 and metrics[-1]["ecg-zeroshot-classes"] >= 2

    # reload through open_clip's own factory: same embeddings as the saved state dict
    model, _, preprocess = open_clip.create_model_and_transforms(
        "FGCLEP-Tiny", pretrained=str(ckpt_dir / "epoch_1.pt")
    )
    reference = open_clip.create_model("FGCLEP-Tiny")
    reference.load_state_dict(ckpt["state_dict"])
    samples = [s for _, s in zip(range(4), iter_samples(LUDB_TEST))]
    ecgs = torch.stack([preprocess(s["ecg"]) for s in samples])
    tokens = open_clip.get_tokenizer("FGCLEP-Tiny")([s["text"] for s in samples])
    (img_a, txt_a), (img_b, txt_b) = embed(model, ecgs, tokens), embed(reference, ecgs, tokens)
    assert torch.equal(img_a, img_b) and torch.equal(txt_a, txt_b)
    fresh = open_clip.create_model("FGCLEP-Tiny")
    assert not torch.allclose(embed(fresh, ecgs, tokens)[0], img_a)  # the trained weights were used

    # --resume latest continues at epoch 1 and writes epoch 2
    assert main(train_argv(tmp_path, "--epochs", "2", "--resume", "latest")) is None
    log = (tmp_path / "run" / "out.log").read_text()
    after_resume = log.split("=> resuming checkpoint")[-1]
    assert after_resume.split("\n")[0].endswith("epoch_1.pt' (epoch 1)")
    assert "Start epoch 1" in after_resume and "Start epoch 0" not in after_resume
    ckpt2 = torch.load(ckpt_dir / "epoch_2.pt", map_location="cpu", weights_only=True)
    assert ckpt2["epoch"] == 2
    assert any(not torch.equal(ckpt2["state_dict"][k], v) for k, v in ckpt["state_dict"].items())


def test_val_data_gives_open_clip_val_metrics(tmp_path):
    assert (
        main(train_argv(tmp_path, "--epochs", "1", "--val-data", LUDB_TEST, "--train-num-samples", "8"))
        is None
    )
    metrics = json.loads((tmp_path / "run" / "checkpoints" / "results.jsonl").read_text().splitlines()[-1])
    assert metrics["num_samples"] == 50 and np.isfinite(metrics["clip_val_loss"])
    assert "ecg-zeroshot-auc" in metrics


def test_loss_log_records_terms_that_sum_to_the_logged_loss(tmp_path):
    log_base = tmp_path / "losses"
    assert (
        main(train_argv(tmp_path, "--epochs", "1", "--loss-log", str(log_base), "--fnm-lambda", "0.25"))
        is None
    )
    rows = [json.loads(line) for line in Path(f"{log_base}-rank0.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"]) for r in rows] == [(0, 0), (0, 1), (0, 2)]
    assert all(
        set(r) == {"epoch", "step", "contrastive_loss", "fnm_loss"} and r["fnm_loss"] > 0 for r in rows
    )
    out_log = (tmp_path / "run" / "out.log").read_text()
    assert f"Contrastive_loss: {rows[0]['contrastive_loss']:#.5g}" in out_log
    assert os.path.exists(tmp_path / "run" / "checkpoints" / "epoch_1.pt")


def _scheduler_steps(monkeypatch) -> list[int]:
    """The steps open_clip's loop passes to its cosine LR scheduler (its own step count), recorded."""
    steps: list[int] = []
    cosine_lr = oc_main.cosine_lr

    def recording_cosine_lr(*args, **kwargs):
        scheduler = cosine_lr(*args, **kwargs)

        def step(s):
            steps.append(s)
            return scheduler(s)

        return step

    monkeypatch.setattr(oc_main, "cosine_lr", recording_cosine_lr)
    return steps


def test_loss_log_keeps_open_clip_steps_through_a_crash_and_resume(tmp_path, monkeypatch):
    """A run dies in the middle of epoch 2 and is resumed from epoch_1.pt: the log holds the dead run's partial
    epoch and the full re-run, each row with open_clip's own epoch and step, and the demo's curve takes each epoch's
    mean from the rows of the run that completed it."""
    import fgclep_plugin.model.loss as loss_module
    from fgclep_plugin.demo import read_curve

    create = loss_module.create_fgclep_loss

    def crashing_loss(args):
        loss, calls = create(args), []

        def call(*a, **kw):
            calls.append(1)
            if len(calls) == 5:  # epoch 2 (0-based 1), its 2nd step
                raise RuntimeError("simulated crash")
            return loss(*a, **kw)

        return call

    monkeypatch.setattr(loss_module, "create_fgclep_loss", crashing_loss)
    log_base = str(tmp_path / "run" / "losses")  # where the demo puts it
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(train_argv(tmp_path, "--epochs", "2", "--loss-log", log_base))
    monkeypatch.setattr(loss_module, "create_fgclep_loss", create)
    steps = _scheduler_steps(monkeypatch)
    assert main(train_argv(tmp_path, "--epochs", "2", "--loss-log", log_base, "--resume", "latest")) is None
    rows = [json.loads(line) for line in Path(f"{log_base}-rank0.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"]) for r in rows] == [(0, 0), (0, 1), (0, 2), (1, 3), (1, 3), (1, 4), (1, 5)]
    assert steps == [3, 4, 5] == [r["step"] for r in rows[4:]]  # the steps open_clip itself counted
    curve = read_curve(tmp_path / "run")
    assert [c["epoch"] for c in curve] == [1, 2]
    for c, chunk in zip(curve, (rows[:3], rows[4:])):
        assert c["siglip"] == pytest.approx(np.mean([r["contrastive_loss"] for r in chunk]))
        assert c["fnm"] == pytest.approx(np.mean([r["fnm_loss"] for r in chunk]))


def test_training_benchmark_runs_real_steps():
    from fgclep_plugin.bench.train import bench, format_result

    r = bench("FGCLEP-Tiny", LUDB_TEST, batch_size=4, steps=2, warmup=1, precision="fp32", device="cpu")
    assert r["samples_per_second"] > 0 and r["peak_rss_mb"] >= r["rss_before_mb"] > 0
    assert np.isfinite(r["first_loss"]) and r["first_loss"] != r["last_loss"]  # the optimiser stepped
    assert "samples/s" in format_result(r)


def test_accum_freq_and_grad_checkpointing_run_through_open_clip(tmp_path, monkeypatch):
    steps = _scheduler_steps(monkeypatch)  # open_clip calls it per micro-batch with the optimiser step
    assert (
        main(
            train_argv(
                tmp_path,
                "--epochs",
                "1",
                "--accum-freq",
                "2",
                "--grad-checkpointing",
                "--train-num-samples",
                "32",
                "--loss-log",
                str(tmp_path / "l"),
            )
        )
        is None
    )
    rows = [json.loads(line) for line in Path(f"{tmp_path / 'l'}-rank0.jsonl").read_text().splitlines()]
    # one row per optimiser step (2 steps of 2 accumulated micro-batches), numbered as open_clip numbers them
    assert [(r["epoch"], r["step"]) for r in rows] == [(0, 0), (0, 1)] and steps == [0, 0, 1, 1]
    assert (tmp_path / "run" / "checkpoints" / "epoch_1.pt").exists()


@pytest.mark.slow
def test_demo_prints_a_curve_from_a_real_run(tmp_path, capsys):
    from fgclep_plugin import demo

    assert (
        demo.main(
            [
                "--root",
                str(tmp_path / "synth"),
                "--model",
                "FGCLEP-Tiny",
                "--epochs",
                "2",
                "--train-samples",
                "64",
                "--batch-size",
                "16",
                "--lr",
                "1e-3",
                "--workers",
                "0",
                "--logs",
                str(tmp_path / "runs"),
                "--name",
                "d",
            ]
        )
        == 0
    )
    rows = json.loads((tmp_path / "runs" / "d" / "curve.json").read_text())
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert all(0 <= r["auc"] <= 1 for r in rows) and rows[1]["loss"] > 0
    losses = [
        json.loads(line) for line in (tmp_path / "runs" / "d" / "losses-rank0.jsonl").read_text().splitlines()
    ]
    assert len(losses) == 8
    assert rows[2]["siglip"] == pytest.approx(sum(x["contrastive_loss"] for x in losses[4:]) / 4)
    assert "zero-shot AUC" in capsys.readouterr().out


def test_multi_positive_with_accum_freq_is_refused_before_any_work(tmp_path):
    """The entry point itself, one CPU process: one error line and exit status 2 before open_clip is loaded or
    the run folder made (was: a NotImplementedError from the loss at the first step)."""
    argv = [*tiny_run_argv(tmp_path, "mp", 16, 4), "--ecg-feature-injection", "multi-positive"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    r = subprocess.run([sys.executable, "-m", "fgclep_plugin.train", *argv, "--accum-freq", "2"],
                       check=False, capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1, r.stderr
    assert err[0].startswith("fgclep_plugin.train: error: --ecg-feature-injection multi-positive")
    assert "--accum-freq 2" in err[0] and "processes" not in err[0]
    assert not (tmp_path / "mp").exists()  # no run folder: open_clip never started


def test_multi_positive_in_several_processes_is_refused_at_start_up(tmp_path, monkeypatch, capsys):
    plugin = split_argv(["--ecg-feature-injection", "multi-positive"])[0]
    assert check_injection(plugin, ["--accum-freq", "1"], world_size=1) is None
    assert "2 processes" in check_injection(plugin, [], world_size=2)
    both = check_injection(plugin, ["--accum-freq", "4"], world_size=8)
    assert "8 processes" in both and "--accum-freq 4" in both
    append = split_argv(["--ecg-feature-injection", "append"])[0]
    assert check_injection(append, ["--accum-freq", "4"], world_size=8) is None  # other modes run anywhere
    # as a launcher's process sees it: WORLD_SIZE 2, refused by main before open_clip_train runs
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(oc_main, "main", lambda argv: pytest.fail("open_clip_train started"))
    argv = [*tiny_run_argv(tmp_path, "mp", 16, 4), "--ecg-feature-injection", "multi-positive"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "multi-positive" in err[0] and "2 processes (WORLD_SIZE)" in err[0]
