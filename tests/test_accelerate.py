"""``accelerate launch -m fgclep_plugin.train`` on CPU: one process (fast) and two processes over gloo (slow).

The two-process run must see the same global batches as the one-process run (``--ecg-deterministic-data``)
and give the same first-step loss: each rank's SigLIP and FNM terms are sums over its local ECGs divided by the
local batch size, so the mean over ranks equals the one-process loss over the global batch (default loss
configuration: FNM against the gathered global batch, ``--fnm-global``). The ECG tower is locked with frozen
BatchNorm statistics here because BatchNorm in training mode normalises by the statistics of the local batch
and ``SyncBatchNorm`` is CUDA-only; on CUDA ``--use-bn-sync`` does the same job.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import open_clip
import pytest
import torch
from train_helpers import LUDB_TEST, LUDB_ZEROSHOT, tiny_run_argv

import fgclep_plugin  # noqa: F401  (registers the FGCLEP model configs)
from fgclep_plugin.ecgdata.reader import iter_samples
from fgclep_plugin.model.registry import register
from fgclep_plugin.train import accelerate_cpu_command

GLOBAL_BATCH = 16


def launch(tmp: Path, name: str, processes: int, *extra: str) -> subprocess.CompletedProcess:
    """Run the training entry point under ``accelerate launch`` on CPU; returns the finished process."""
    cmd = [
        *accelerate_cpu_command(processes),
        *tiny_run_argv(tmp, name, 2 * GLOBAL_BATCH, GLOBAL_BATCH // processes),
        "--epochs",
        "1",
        "--loss-log",
        str(tmp / f"{name}-loss"),
        "--ecg-deterministic-data",
        "--lock-image",
        "--lock-image-freeze-bn-stats",
        *extra,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def losses(tmp: Path, name: str, rank: int) -> list[dict]:
    return [json.loads(line) for line in (tmp / f"{name}-loss-rank{rank}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("accel1")
    launch(
        tmp,
        "one",
        1,
        *LUDB_ZEROSHOT,
    )
    return tmp


def reload_matches_saved_state(ckpt_path: Path) -> None:
    """``pretrained=<checkpoint>`` through open_clip's factory gives the embeddings of the saved state dict."""
    register()
    model, _, preprocess = open_clip.create_model_and_transforms("FGCLEP-Tiny", pretrained=str(ckpt_path))
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict"]
    reference = open_clip.create_model("FGCLEP-Tiny")
    reference.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    samples = [s for _, s in zip(range(3), iter_samples(LUDB_TEST))]
    ecgs = torch.stack([preprocess(s["ecg"]) for s in samples])
    tokens = open_clip.get_tokenizer("FGCLEP-Tiny")([s["text"] for s in samples])
    for m in (model, reference):
        m.eval()
    with torch.no_grad():
        assert torch.equal(model.encode_image(ecgs), reference.encode_image(ecgs))
        assert torch.equal(model.encode_text(tokens), reference.encode_text(tokens))


def test_one_process_run_trains_checkpoints_and_reloads(one_process):
    rows = losses(one_process, "one", 0)
    assert [r["step"] for r in rows] == [0, 1]
    ckpt = one_process / "one" / "checkpoints" / "epoch_1.pt"
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"] == 1
    metrics = json.loads((one_process / "one" / "checkpoints" / "results.jsonl").read_text().splitlines()[-1])
    assert 0.0 <= metrics["ecg-zeroshot-auc"] <= 1.0
    reload_matches_saved_state(ckpt)


@pytest.mark.slow
def test_two_processes_match_one_process_first_step_and_resume(one_process, tmp_path):
    proc = launch(tmp_path, "two", 2)
    assert "Running in distributed mode with multiple processes. Device: cpu" in proc.stderr + proc.stdout
    ranks = [losses(tmp_path, "two", r)[0] for r in (0, 1)]
    single = losses(one_process, "one", 0)[0]
    assert ranks[0]["contrastive_loss"] != pytest.approx(
        ranks[1]["contrastive_loss"], rel=1e-3
    )  # different halves
    for term in ("contrastive_loss", "fnm_loss"):
        assert (ranks[0][term] + ranks[1][term]) / 2 == pytest.approx(single[term], rel=1e-5, abs=1e-6)

    ckpt = tmp_path / "two" / "checkpoints" / "epoch_1.pt"
    reload_matches_saved_state(ckpt)
    proc = launch(
        tmp_path,
        "two",
        2,
        "--epochs",
        "2",
        "--resume",
        "latest",
        *LUDB_ZEROSHOT,
    )
    log = (tmp_path / "two" / "out.log").read_text()
    assert "=> resuming checkpoint" in log and "(epoch 1)" in log.split("=> resuming checkpoint")[-1]
    assert (
        torch.load(tmp_path / "two" / "checkpoints" / "epoch_2.pt", map_location="cpu", weights_only=True)[
            "epoch"
        ]
        == 2
    )
    metrics = json.loads((tmp_path / "two" / "checkpoints" / "results.jsonl").read_text().splitlines()[-1])
    assert 0.0 <= metrics["ecg-zeroshot-auc"] <= 1.0  # rank 0 evaluates while rank 1 waits at the barrier
