"""The training command lines the demo and the study build: pinned word for word. ``fgclep study`` records each
step's argv in its manifest and re-runs a step whose argv changed, so the same settings must keep giving the
same list."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from fgclep_plugin.demo.stages import launch_command
from fgclep_plugin.study.grid import stage3_over, train_argv
from fgclep_plugin.train import accelerate_cpu_command


def _study_args(**over) -> argparse.Namespace:
    settings = {
        "model": "FGCLEP-Tiny", "epochs": 6, "train_samples": 1600, "batch_size": 32, "lr": 3e-4, "warmup": 10,
        "workers": 1, "precision": "fp32", "fnm_lambda": 0.05, "stage3_init": "pretrained", "stage3_epochs": 2,
        "stage3_samples": 800, "stage3_lr": 3e-5, "stage3_warmup": 10,
    }  # fmt: skip
    return argparse.Namespace(**(settings | over))


STAGE1 = [
    "--model", "FGCLEP-Tiny", "--train-data", "c/train/synth-train-{000000..000007}.tar",
    "--train-num-samples", "1600", "--batch-size", "32", "--epochs", "6", "--lr", "0.0003", "--wd", "1e-4",
    "--warmup", "10", "--workers", "1", "--device", "cpu", "--precision", "fp32", "--seed", "0",
    "--logs", "out/r0.3", "--name", "stage1", "--save-frequency", "0", "--fnm-lambda", "0.05",
]  # fmt: skip


def test_study_stage1_argv_is_pinned():
    args = _study_args()
    got = train_argv(args, "c/train/synth-train-{000000..000007}.tar", Path("out/r0.3"), "stage1", 0)
    assert got == STAGE1


def test_study_stage3_argv_is_pinned():
    ck1 = Path("out/r0.3/stage1/checkpoints/epoch_6.pt")
    args = _study_args()
    over = stage3_over(args, ck1, "multi-positive")
    got = train_argv(
        args, "s2/a-{000000..000001}.tar", Path("out/r0.3/stage3"), "perfect-features-s1", 1, **over
    )
    assert got == [
        "--model", "FGCLEP-Tiny", "--train-data", "s2/a-{000000..000001}.tar", "--train-num-samples", "800",
        "--batch-size", "32", "--epochs", "2", "--lr", "3e-05", "--wd", "1e-4", "--warmup", "10",
        "--workers", "1", "--device", "cpu", "--precision", "fp32", "--seed", "1", "--logs", "out/r0.3/stage3",
        "--name", "perfect-features-s1", "--save-frequency", "0", "--fnm-lambda", "0.05",
        *over["extra"],
    ]  # fmt: skip
    assert over["extra"][:2] == ["--ecg-feature-injection", "multi-positive"]
    args = _study_args(stage3_init="resume")
    over = stage3_over(args, ck1, "append")
    got = train_argv(args, "s2/a.tar", Path("o"), "n", 2, **over)
    assert got == [
        "--model", "FGCLEP-Tiny", "--train-data", "s2/a.tar", "--train-num-samples", "800",
        "--batch-size", "32", "--epochs", "8", "--lr", "0.0003", "--wd", "1e-4", "--warmup", "10",
        "--workers", "1", "--device", "cpu", "--precision", "fp32", "--seed", "2", "--logs", "o",
        "--name", "n", "--save-frequency", "0", "--fnm-lambda", "0.05",
        "--ecg-feature-injection", "append", "--resume", str(ck1),
    ]  # fmt: skip


def test_demo_launch_command_is_pinned():
    args = argparse.Namespace(
        processes=2, model="FGCLEP-ResNet1d18-MiniLM", train_samples=640, batch_size=16, epochs=3, lr=1e-3,
        warmup=5, workers=0, precision="amp_bf16", seed=7, logs="runs/demo", name="stage1", fnm_lambda=0.05,
        extra=["--grad-checkpointing"],
    )  # fmt: skip
    urls = {"train": "t/{0..3}.tar", "val": "v.tar"}
    assert launch_command(args, urls) == [
        *accelerate_cpu_command(2),
        "--model", "FGCLEP-ResNet1d18-MiniLM", "--train-data", "t/{0..3}.tar", "--train-num-samples", "640",
        "--batch-size", "16", "--epochs", "3", "--lr", "0.001", "--wd", "1e-4", "--warmup", "5",
        "--workers", "0", "--device", "cpu", "--precision", "amp_bf16", "--seed", "7", "--logs", "runs/demo",
        "--name", "stage1", "--save-frequency", "0", "--report-to", "tensorboard", "--log-every-n-steps", "10",
        "--ecg-zeroshot-data", "v.tar", "--ecg-zeroshot-label-key", "diagnoses", "--zeroshot-frequency", "1",
        "--loss-log", "runs/demo/stage1/losses", "--fnm-lambda", "0.05", "--grad-checkpointing",
    ]  # fmt: skip


def test_demo_stage3_settings_come_from_the_shared_recipe():
    """The demo's original-report control has no injection flag; the flags after -- stand before the checkpoint
    flag (so they may override the injection but not the checkpoint); an unknown init is refused."""
    from fgclep_plugin.trainargs import stage3_over as shared_stage3_over

    args = _study_args()
    got = shared_stage3_over(args, "ck.pt", None, extra=["--grad-checkpointing"])
    assert got == {
        "epochs": 2, "train_samples": 800, "lr": 3e-5, "warmup": 10,
        "extra": ["--grad-checkpointing", "--pretrained", "ck.pt"],
    }  # fmt: skip
    assert shared_stage3_over(args, "ck.pt", "caption", extra=["-x"])["extra"] == [
        "--ecg-feature-injection", "caption", "-x", "--pretrained", "ck.pt",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="stage-3 init"):
        shared_stage3_over(args, "ck.pt", None, init="fresh")


def test_demo_and_study_share_the_training_options():
    """One definition of the training flags: the same defaults in both commands, but for the FNM weight and the
    precision each command chooses (demo: auto; study: fp32, the manifests' value)."""
    from fgclep_plugin.demo import cli as demo_cli
    from fgclep_plugin.study import cli as study_cli

    parsed = {}
    for name, module in (("demo", demo_cli), ("study", study_cli)):
        p = argparse.ArgumentParser()
        module.add_arguments(p)
        parsed[name] = vars(p.parse_args([]))
    shared = ("epochs", "train_samples", "batch_size", "lr", "warmup", "fnm_lambda", "workers")
    shared += ("calib_size", "stage3_shards", "stage3_epochs", "stage3_samples", "stage3_lr", "stage3_warmup")
    assert {k: parsed["demo"][k] for k in shared} == {k: parsed["study"][k] for k in shared}
    assert (parsed["demo"]["precision"], parsed["study"]["precision"]) == ("auto", "fp32")
    assert "stage3_init" in parsed["study"] and "stage3_init" not in parsed["demo"]
