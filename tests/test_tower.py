"""ECG tower (1D ResNet) and ECG transform."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from fgclep_plugin.model.tower import ARCHS, EcgTower, EcgTowerCfg, build_ecg_tower
from fgclep_plugin.model.transform import EcgTransform, ecg_transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.reference_resnet1d import RefResNet1d50

TV_RESNETS = {
    "resnet1d18": torchvision.models.resnet18,
    "resnet1d34": torchvision.models.resnet34,
    "resnet1d50": torchvision.models.resnet50,
    "resnet1d101": torchvision.models.resnet101,
}


def _cfg(**kw) -> dict:
    return {"ecg_tower": "resnet1d", **kw}


def _expected_params_from_torchvision(arch: str, embed_dim: int, leads: int = 12) -> int:
    """Parameter count of the 1D analogue of torchvision's 2D ResNet: every k x k conv becomes a k-tap conv,
    the stem takes `leads` channels, and the 1000-way classifier becomes a projection to `embed_dim`."""
    tv = TV_RESNETS[arch](weights=None)
    total = 0
    for name, m in tv.named_modules():
        if isinstance(m, nn.Conv2d):
            in_ch = leads if name == "conv1" else m.in_channels
            total += m.out_channels * in_ch * m.kernel_size[1]
        elif isinstance(m, nn.BatchNorm2d):
            total += 2 * m.num_features
    return total + tv.fc.in_features * embed_dim + embed_dim


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_param_counts_match_1d_analogue_of_torchvision(arch):
    tower = build_ecg_tower(256, _cfg(arch=arch))
    assert sum(p.numel() for p in tower.parameters()) == _expected_params_from_torchvision(arch, 256)


def test_resnet1d50_matches_reference_implementation_param_count():
    ours = build_ecg_tower(256, _cfg(arch="resnet1d50"))
    ref = RefResNet1d50(256)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters()) == 16_483_712


def test_resnet1d50_computes_the_same_function_as_the_reference():
    torch.manual_seed(0)
    ours = build_ecg_tower(32, _cfg(arch="resnet1d50", width=8, zero_init_residual=False)).train()
    ref = RefResNet1d50(32, width=8).train()
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    ours_sd.pop("ecg_vision_cfg")  # the stored vision_cfg, not a weight
    assert [v.shape for v in ours_sd.values()] == [v.shape for v in ref_sd.values()]
    ref.load_state_dict(dict(zip(ref_sd, ours_sd.values())))
    x = torch.randn(3, 12, 900)
    xo, xr = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    yo, yr = ours(xo), ref(xr)
    assert torch.allclose(yo, yr, atol=1e-5)
    yo.square().sum().backward()
    yr.square().sum().backward()
    assert torch.allclose(xo.grad, xr.grad, atol=1e-5)
    for po, pr in zip(ours.parameters(), ref.parameters()):
        assert torch.allclose(po.grad, pr.grad, rtol=1e-4, atol=1e-5)
    for bo, br in zip(ours.buffers(), ref.buffers()):
        assert torch.allclose(bo.float(), br.float(), atol=1e-6)


@pytest.mark.parametrize(
    ("arch", "features"), [("resnet1d18", 64), ("resnet1d34", 64), ("resnet1d50", 256), ("resnet1d101", 256)]
)
def test_output_shapes(arch, features):
    tower = build_ecg_tower(24, _cfg(arch=arch, width=8)).eval()
    x = torch.randn(3, 12, 1000)
    with torch.no_grad():
        assert tower.forward_features(x).shape == (3, features)
        assert tower(x).shape == (3, 24)


def test_pooling_and_mlp_head_shapes():
    tower = build_ecg_tower(16, _cfg(arch="resnet1d18", width=8, pool="avgmax", proj="mlp")).eval()
    with torch.no_grad():
        assert tower.forward_features(torch.randn(2, 12, 600)).shape == (2, 128)
        assert tower(torch.randn(2, 12, 600)).shape == (2, 16)


def test_bad_config_and_input_errors():
    with pytest.raises(ValueError, match="image_size"):
        build_ecg_tower(8, _cfg(image_size=224))
    with pytest.raises(ValueError, match="resnet1d7"):
        build_ecg_tower(8, _cfg(arch="resnet1d7"))
    with pytest.raises(ValueError, match=r"12 values, got 3"):
        EcgTowerCfg.from_vision_cfg(_cfg(norm="fixed", mean=[0.0, 0.0, 0.0]))
    tower = build_ecg_tower(8, _cfg(arch="resnet1d18", width=8))
    with pytest.raises(ValueError, match=r"\[batch, 12, samples\], got \(2, 8, 500\)"):
        tower(torch.randn(2, 8, 500))


def test_batch_has_no_cross_sample_effect_in_eval():
    tower = build_ecg_tower(8, _cfg(arch="resnet1d18", width=8)).eval()
    x = torch.randn(4, 12, 800)
    with torch.no_grad():
        together = tower(x)
        alone = torch.cat([tower(x[i : i + 1]) for i in range(4)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_lock_freezes_groups_and_bn_stats():
    tower = build_ecg_tower(8, _cfg(arch="resnet1d18", width=8))
    tower.lock()
    assert not any(p.requires_grad for p in tower.parameters())

    tower = build_ecg_tower(8, _cfg(arch="resnet1d18", width=8))
    tower.lock(unlocked_groups=1, freeze_bn_stats=True)
    trainable = {n for n, p in tower.named_parameters() if p.requires_grad}
    assert trainable == {"proj.weight", "proj.bias"}
    stats = tower.trunk.stem[1].running_mean.clone()
    tower.train()
    tower(torch.randn(2, 12, 400))
    assert torch.equal(tower.trunk.stem[1].running_mean, stats)  # frozen BN keeps its statistics
    assert not tower.trunk.stem[1].training and tower.proj.training
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(tower)  # as open_clip_train does with --use-bn-sync
    synced.eval().train()
    assert isinstance(synced.trunk.stem[1], nn.SyncBatchNorm) and not synced.trunk.stem[1].training

    free = build_ecg_tower(8, _cfg(arch="resnet1d18", width=8)).train()
    before = free.trunk.stem[1].running_mean.clone()
    free(torch.randn(2, 12, 400))
    assert not torch.equal(free.trunk.stem[1].running_mean, before)


def test_grad_checkpointing_gives_same_gradients_and_bn_stats():
    torch.manual_seed(0)
    base = build_ecg_tower(8, _cfg(arch="resnet1d50", width=8, zero_init_residual=False)).train()
    ckpt = copy.deepcopy(base)
    ckpt.set_grad_checkpointing(True)
    x = torch.randn(3, 12, 700)
    base(x).square().sum().backward()
    ckpt(x).square().sum().backward()
    for (name, p), q in zip(base.named_parameters(), ckpt.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name
    for (name, b), c in zip(base.named_buffers(), ckpt.buffers()):
        assert torch.allclose(b.float(), c.float(), atol=1e-6), name  # running stats updated once, not twice
    assert ckpt.trunk.stages[0][0].bn1.momentum == 0.1


# ---- transform --------------------------------------------------------------------------------------


def test_transform_decimates_crops_and_standardises_per_lead():
    rng = np.random.default_rng(0)
    ecg = (rng.standard_normal((12, 5000)) * np.arange(1, 13)[:, None] + 3).astype(np.float16)
    cfg = EcgTowerCfg(sample_rate=250, input_length=2400, norm="per_lead")
    out = EcgTransform(cfg, is_train=False)(ecg)
    assert out.dtype == torch.float32 and out.shape == (12, 2400)
    x = ecg.astype(np.float64).reshape(12, 2500, 2).mean(axis=2)[:, 50:2450]  # centre window
    expected = (x - x.mean(axis=1, keepdims=True)) / (x.std(axis=1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(out.numpy(), expected, atol=2e-5)


def test_transform_fixed_norm_pads_short_records():
    ecg = torch.full((12, 300), 2.0)
    cfg = EcgTowerCfg(sample_rate=500, input_length=400, norm="fixed", mean=[1.0], std=[0.5])
    out = EcgTransform(cfg)(ecg)
    assert out.shape == (12, 400)
    assert torch.all(out[:, :300] == 2.0) and torch.all(out[:, 300:] == -2.0)  # zero pad, then normalised


def test_train_transform_random_window_is_a_slice_of_the_signal():
    ecg = np.tile(np.arange(5000, dtype=np.float32), (12, 1))
    cfg = EcgTowerCfg(sample_rate=500, input_length=5000, train_crop_length=1000, norm="fixed")
    train, val = ecg_transforms(cfg)
    starts = set()
    for _ in range(20):
        out = train(ecg)
        assert out.shape == (12, 1000)
        start = int(out[0, 0])
        assert torch.equal(out[0], torch.arange(start, start + 1000, dtype=torch.float32))
        starts.add(start)
    assert len(starts) > 1
    assert val(ecg).shape == (12, 5000)


def test_transform_rejects_bad_input():
    t = EcgTransform(EcgTowerCfg())
    with pytest.raises(ValueError, match=r"\[12, samples\], got \(5000, 12\)"):
        t(np.zeros((5000, 12), dtype=np.float32))
    bad = np.zeros((12, 5000), dtype=np.float32)
    bad[3, 10] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        t(bad)
    with pytest.raises(ValueError, match="must divide"):
        EcgTransform(EcgTowerCfg(sample_rate=300))


def test_tower_is_ecg_tower_type():
    assert isinstance(build_ecg_tower(8, _cfg(arch="resnet1d18", width=8)), EcgTower)


def _small(**kw) -> EcgTower:
    return build_ecg_tower(16, _cfg(**{"arch": "resnet1d18", "width": 8, "sample_rate": 250, "input_length": 2500,
                                       **kw}))  # fmt: skip


def test_state_dict_carries_the_vision_cfg_and_refuses_a_different_input_format():
    """A checkpoint names the ECG input it was trained on; loading it into a tower that expects another rate,
    length or normalisation (same weight shapes, silently wrong embeddings) is an error naming the fields."""
    import json

    tower = _small(train_crop_length=2000)
    stored = tower.state_dict()["ecg_vision_cfg"]
    assert stored.dtype == torch.uint8
    saved = json.loads(bytes(stored.tolist()).decode())
    assert saved == {**EcgTowerCfg().to_dict(), **_cfg(arch="resnet1d18", width=8, sample_rate=250,
                                                       input_length=2500, train_crop_length=2000)}  # fmt: skip
    other = _small(sample_rate=500, norm="fixed")
    with pytest.raises(RuntimeError, match=r"sample_rate.*250.*500"):
        other.load_state_dict(tower.state_dict())
    # training-only settings may differ (fine-tuning with another crop), and the weights load
    cropped = _small(train_crop_length=1000)
    cropped.load_state_dict(tower.state_dict())
    assert torch.equal(cropped.proj.weight, tower.proj.weight)
    # state dicts written before the cfg was stored still load strictly
    legacy = {k: v for k, v in tower.state_dict().items() if k != "ecg_vision_cfg"}
    _small().load_state_dict(legacy)
