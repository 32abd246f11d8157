"""FG-CLEP loss: SigLIP part is open_clip's, FNM matches Eq. 6, gradients and multi-process behaviour."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import SigLipLoss

from fgclep_plugin.model.loss import FgClepLoss, create_fgclep_loss, fnm_loss

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DIST_IMPLS = ("bidir", "shift", "reduce", "gather")
NORMS = ("paper", "mean")


def _features(n: int = 8, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    txt = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    return img, txt


def _fnm_numpy(
    img: np.ndarray, txt: np.ndarray, cols: np.ndarray | None = None, norm: str = "paper"
) -> float:
    """Eq. 6 written as loops over plain numpy vectors: ``(1/B) sum_i sum_j |cos(e_i, t_j) - cos(t_i, t_j)|``
    (``norm="mean"``: divided by the number of pairs instead). ``cols``: the reports t_j (default ``txt``)."""

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    cols = txt if cols is None else cols
    total = 0.0
    for i in range(img.shape[0]):
        for j in range(cols.shape[0]):
            total += abs(cos(img[i], cols[j]) - cos(txt[i], cols[j]))
    pairs = img.shape[0] * cols.shape[0]
    return total / img.shape[0] if norm == "paper" else total / pairs


def test_lambda_zero_equals_open_clip_siglip():
    img, txt = _features()
    scale, bias = torch.tensor(math.log(10)).exp(), torch.tensor(-10.0)
    ours = FgClepLoss(fnm_lambda=0.0)(img, txt, scale, bias)
    ref = SigLipLoss()(img, txt, scale, bias)
    assert torch.allclose(ours, ref, atol=1e-6)
    # a different scale and bias give a different value, so the comparison is not vacuous
    assert not torch.allclose(ours, SigLipLoss()(img, txt, scale * 2, bias + 3))


@pytest.mark.parametrize("norm", ["paper", "mean"])
def test_fnm_matches_independent_eq6(norm):
    img, txt = _features(n=6, d=5, seed=3)
    img, txt = img * 3.0, txt * 0.5  # un-normalised inputs: the term is defined on cosines
    expected = _fnm_numpy(img.double().numpy(), txt.double().numpy(), norm=norm)
    assert fnm_loss(img, txt, norm=norm).item() == pytest.approx(expected, rel=1e-5)


def test_fnm_paper_normalisation_is_the_default_and_batch_size_times_the_mean():
    img, txt = _features(n=12, d=8, seed=6)
    paper, mean = fnm_loss(img, txt), fnm_loss(img, txt, norm="mean")
    assert paper.item() == pytest.approx(fnm_loss(img, txt, norm="paper").item(), rel=1e-7)
    assert paper.item() == pytest.approx(12 * mean.item(), rel=1e-5)
    assert FgClepLoss().fnm_norm == "paper"


@pytest.mark.parametrize("norm", ["paper", "mean"])
def test_fnm_local_rows_against_gathered_columns(norm):
    """One rank's value: its 3 ECGs and reports against all 8 reports, divided by its 3 rows (paper)."""
    img, txt = _features(n=8, d=6, seed=7)
    rows = slice(2, 5)
    expected = _fnm_numpy(img[rows].double().numpy(), txt[rows].double().numpy(), txt.double().numpy(), norm)
    assert fnm_loss(img[rows], txt[rows], txt, norm=norm).item() == pytest.approx(expected, rel=1e-5)


def test_unknown_fnm_norm_rejected():
    img, txt = _features()
    with pytest.raises(ValueError, match="'sum'"):
        fnm_loss(img, txt, norm="sum")
    with pytest.raises(ValueError, match="fnm_norm"):
        FgClepLoss(fnm_norm="sum")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fnm_is_computed_in_float32_under_autocast(dtype):
    """open_clip computes the loss inside autocast (--precision amp / amp_bf16); FNM's |cos - S| is a small
    difference of two cosines, so low-precision matmuls would swamp it (bf16: ~1e-3 relative error)."""
    g = torch.Generator().manual_seed(4)
    txt = torch.randn(32, 64, generator=g)
    img = txt + 0.3 * torch.randn(32, 64, generator=g)  # trained-like: cosines close to the targets
    expected = _fnm_numpy(img.double().numpy(), txt.double().numpy())
    with torch.autocast("cpu", dtype=dtype):
        value = fnm_loss(img, txt)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_total_is_sigmoid_plus_weighted_fnm_and_dict_keys():
    img, txt = _features(seed=1)
    scale, bias = torch.tensor(10.0), torch.tensor(-5.0)
    loss = FgClepLoss(fnm_lambda=0.5)
    parts = loss(img, txt, scale, bias, output_dict=True)
    assert set(parts) == {"contrastive_loss", "fnm_loss"}
    sig = SigLipLoss()(img, txt, scale, bias)
    fnm = _fnm_numpy(img.double().numpy(), txt.double().numpy())
    assert parts["contrastive_loss"].item() == pytest.approx(sig.item(), rel=1e-6)
    assert parts["fnm_loss"].item() == pytest.approx(0.5 * fnm, rel=1e-5)
    assert loss(img, txt, scale, bias).item() == pytest.approx(
        sum(v.item() for v in parts.values()), rel=1e-6
    )


def test_detach_semantic_controls_gradient_through_target():
    img, txt = _features(seed=2)
    txt_d = txt.clone().requires_grad_(True)
    fnm_loss(img, txt_d, detach_semantic=True).backward()
    # detached: same gradient as with S computed from a frozen copy of the report embeddings
    txt_ref = txt.clone().requires_grad_(True)
    s = F.normalize(txt, dim=-1) @ F.normalize(txt, dim=-1).T
    ((F.normalize(img, dim=-1) @ F.normalize(txt_ref, dim=-1).T - s).abs().sum() / len(img)).backward()
    assert torch.allclose(txt_d.grad, txt_ref.grad, atol=1e-7)
    txt_nd = txt.clone().requires_grad_(True)
    fnm_loss(img, txt_nd, detach_semantic=False).backward()
    assert not torch.allclose(txt_nd.grad, txt_d.grad, atol=1e-4)


def test_negative_lambda_rejected():
    with pytest.raises(ValueError, match="fnm_lambda"):
        FgClepLoss(fnm_lambda=-1.0)


def test_create_fgclep_loss_reads_args():
    from types import SimpleNamespace

    args = SimpleNamespace(
        fnm_lambda=0.25,
        fnm_detach=False,
        fnm_global=False,
        fnm_norm="mean",
        rank=1,
        world_size=4,
        loss_dist_impl="gather",
    )
    loss = create_fgclep_loss(args)
    assert (loss.fnm_lambda, loss.detach_semantic, loss.fnm_global, loss.fnm_norm) == (
        0.25,
        False,
        False,
        "mean",
    )
    assert (loss.rank, loss.world_size, loss.dist_impl) == (1, 4, "gather")
    assert create_fgclep_loss(SimpleNamespace(rank=0, world_size=1)).fnm_norm == "paper"


def test_fnm_norm_flag_reaches_the_loss_through_the_entry_point(tmp_path, monkeypatch):
    """``python -m fgclep_plugin.train --fnm-norm``: two 1-step FGCLEP-Tiny runs (same seed, same batch of 4)
    log a first-step FNM term whose paper/mean ratio is the batch size, and params.txt records the flag."""
    from train_helpers import tiny_run_argv

    from fgclep_plugin.train import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    first = {}
    for norm in ("paper", "mean"):
        log = tmp_path / f"losses-{norm}"
        argv = [
            *tiny_run_argv(tmp_path, norm, samples=4, batch_size=4),
            "--epochs",
            "1",
            "--save-frequency",
            "0",
        ]
        assert main([*argv, "--loss-log", str(log), "--fnm-norm", norm]) is None
        first[norm] = json.loads(Path(f"{log}-rank0.jsonl").read_text().splitlines()[0])
        assert f"fnm_norm: {norm}" in (tmp_path / norm / "params.txt").read_text()
    assert first["paper"]["contrastive_loss"] == pytest.approx(first["mean"]["contrastive_loss"], rel=1e-6)
    assert first["mean"]["fnm_loss"] > 0
    assert first["paper"]["fnm_loss"] == pytest.approx(4 * first["mean"]["fnm_loss"], rel=1e-4)


def test_gradients_reach_both_towers_and_logit_params(tiny_model_and_tokenizer):
    model, _, tokenizer = tiny_model_and_tokenizer
    model.train()
    model.zero_grad()
    g = torch.Generator().manual_seed(0)
    ecg = torch.randn(4, 12, 2000, generator=g)
    text = tokenizer(["sinus rhythm", "atrial fibrillation", "left bundle branch block", "normal ecg"])
    out = model(ecg, text)
    img, txt, scale, bias = out["image_features"], out["text_features"], out["logit_scale"], out["logit_bias"]
    FgClepLoss(fnm_lambda=0.5)(img, txt, scale, bias).backward()
    for name in (
        "visual.trunk.stem.0.weight",
        "visual.proj.weight",
        "text.token_embedding.weight",
        "text.text_projection",
        "logit_scale",
        "logit_bias",
    ):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


@pytest.fixture(scope="module")
def tiny_model_and_tokenizer():
    import open_clip

    import fgclep_plugin

    fgclep_plugin.register()
    model, _, _ = open_clip.create_model_and_transforms("FGCLEP-Tiny", output_dict=True)
    return model, None, open_clip.get_tokenizer("FGCLEP-Tiny")


# ---- multi-process: two gloo ranks, each with half of the global batch ---------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    img, txt = _features(n=8, d=16, seed=5)
    b = img.shape[0] // world
    scale, bias = torch.tensor(10.0), torch.tensor(-3.0)
    results = {}
    for impl in DIST_IMPLS:
        for fnm_global in (True, False):
            for norm in NORMS:
                li = img[rank * b : (rank + 1) * b].clone().requires_grad_(True)
                lt = txt[rank * b : (rank + 1) * b].clone().requires_grad_(True)
                loss = FgClepLoss(
                    fnm_lambda=0.5,
                    fnm_global=fnm_global,
                    fnm_norm=norm,
                    rank=rank,
                    world_size=world,
                    dist_impl=impl,
                )
                parts = loss(li, lt, scale, bias, output_dict=True)
                sum(parts.values()).backward()
                results[(impl, fnm_global, norm)] = {k: v.item() for k, v in parts.items()} | {
                    "img_grad": li.grad,
                    "txt_grad": lt.grad,
                }
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def test_two_process_loss_matches_single_process_global_batch(tmp_path):
    world = 2
    torch.multiprocessing.spawn(_rank_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world)
    per_rank = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]

    img, txt = _features(n=8, d=16, seed=5)
    b = img.shape[0] // world
    scale, bias = torch.tensor(10.0), torch.tensor(-3.0)
    npi, npt = img.double().numpy(), txt.double().numpy()
    for norm in NORMS:
        gi, gt = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
        full = FgClepLoss(fnm_lambda=0.5, fnm_norm=norm)(gi, gt, scale, bias, output_dict=True)
        sum(full.values()).backward()
        # the single-process reference itself is Eq. 6 over the global batch of 8
        assert full["fnm_loss"].item() == pytest.approx(0.5 * _fnm_numpy(npi, npt, norm=norm), rel=1e-5)
        local_fnm = np.mean(
            [
                0.5 * _fnm_numpy(npi[r * b : (r + 1) * b], npt[r * b : (r + 1) * b], norm=norm)
                for r in range(world)
            ]
        )
        for impl in DIST_IMPLS:
            glob = [p[(impl, True, norm)] for p in per_rank]
            # the mean over ranks of each term equals the single-process value on the global batch
            assert np.mean([g["contrastive_loss"] for g in glob]) == pytest.approx(
                full["contrastive_loss"].item(), rel=1e-5
            )
            assert np.mean([g["fnm_loss"] for g in glob]) == pytest.approx(full["fnm_loss"].item(), rel=1e-5)
            # and the gradients (summed over ranks by autograd through the gathers) are world x the global
            # ones, i.e. after DDP's averaging they equal single-process gradients
            for r in range(world):
                rows = slice(r * b, (r + 1) * b)
                assert torch.allclose(glob[r]["img_grad"], world * gi.grad[rows], atol=1e-5), (impl, norm)
                assert torch.allclose(glob[r]["txt_grad"], world * gt.grad[rows], atol=1e-5), (impl, norm)
            loc = [p[(impl, False, norm)] for p in per_rank]
            assert np.mean([x["fnm_loss"] for x in loc]) == pytest.approx(local_fnm, rel=1e-5)
            assert local_fnm != pytest.approx(full["fnm_loss"].item(), rel=1e-3)


def test_demo_passes_its_fnm_lambda_and_flags_after_the_separator_override_it():
    import argparse

    from fgclep_plugin.demo import DEMO_FNM_LAMBDA, add_arguments, launch_command
    from fgclep_plugin.train import split_argv

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    urls = {"train": "train.tar", "val": "val.tar"}

    def plugin_flags(argv: list[str]) -> argparse.Namespace:
        args = parser.parse_args(["--logs", "runs", *argv])
        args.name = "demo"
        cmd = launch_command(args, urls)
        return split_argv(cmd[cmd.index("fgclep_plugin.train") + 1 :])[0]

    default = plugin_flags([])
    assert (default.fnm_lambda, default.fnm_norm) == (DEMO_FNM_LAMBDA, "paper") and DEMO_FNM_LAMBDA != 0.5
    assert plugin_flags(["--fnm-lambda", "0.2"]).fnm_lambda == 0.2
    override = plugin_flags(["--", "--fnm-lambda", "0.5", "--fnm-norm", "mean"])
    assert (override.fnm_lambda, override.fnm_norm) == (0.5, "mean")
