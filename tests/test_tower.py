"""ECG tower (1D ResNet) and ECG transform."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from fgclep_plugin.model.tower import ARCHS, EcgTower, EcgTowerCfg, build_ecg_tower
from fgclep_plugin.model.transform import EcgTransform, batch_to_tensor, ecg_to_tensor, ecg_transforms

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


def _reference_weights(ours_sd: dict, ref_sd: dict) -> dict:
    """Our state dict in the reference's names: trunk and projection in order; the attention pool by role
    (timm keeps k and v in one stacked ``kv`` matrix and the query as [1, 1, dim])."""
    ours_sd = {k: v for k, v in ours_sd.items() if k != "ecg_vision_cfg"}  # the stored vision_cfg, no weight
    head = {k: ours_sd.pop(k) for k in [k for k in ours_sd if k.startswith("attn_pool.")]}
    out = {}
    if head:
        k_w, v_w = head.pop("attn_pool.attn.kv.weight").chunk(2)
        k_b, v_b = head.pop("attn_pool.attn.kv.bias").chunk(2)
        role = {"reduce.weight": "down.weight", "reduce.bias": "down.bias", "attn.pos_embed": "pos",
                "attn.q.weight": "wq.weight", "attn.q.bias": "wq.bias"}  # fmt: skip
        out = {
            f"attnpool.{role[k.removeprefix('attn_pool.')]}": v for k, v in head.items() if "latent" not in k
        }
        out["attnpool.query"] = head["attn_pool.attn.latent"].reshape(-1)
        out.update({"attnpool.wk.weight": k_w, "attnpool.wk.bias": k_b})
        out.update({"attnpool.wv.weight": v_w, "attnpool.wv.bias": v_b})
    rest = [k for k in ref_sd if k not in out]
    assert [ref_sd[k].shape for k in rest] == [v.shape for v in ours_sd.values()]
    out.update(zip(rest, ours_sd.values()))
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in ref_sd.items()}
    return out


MERL_LAYOUT = {"stem_pool": False, "pool": "attention", "attn_dim": 16, "attn_heads": 4}


@pytest.mark.parametrize("layout", [{}, MERL_LAYOUT], ids=["torchvision", "merl"])
def test_resnet1d50_computes_the_same_function_as_the_reference(layout):
    torch.manual_seed(0)
    vcfg = _cfg(arch="resnet1d50", width=8, zero_init_residual=False, input_length=900, **layout)
    ours = build_ecg_tower(32, vcfg).train()
    attention = (layout["attn_dim"], layout["attn_heads"]) if layout else None
    ref = RefResNet1d50(32, width=8, stem_pool=not layout, attention=attention, input_length=900).train()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    ref.load_state_dict(_reference_weights(ours.state_dict(), ref.state_dict()))
    x = torch.randn(3, 12, 900)
    xo, xr = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    yo, yr = ours(xo), ref(xr)
    assert torch.allclose(yo, yr, atol=1e-5)
    yo.square().sum().backward()
    yr.square().sum().backward()
    assert torch.allclose(xo.grad, xr.grad, atol=1e-5)
    ref_grads = {k: p.grad for k, p in ref.named_parameters()}
    as_ref = _reference_weights({k: p.grad for k, p in ours.named_parameters()}, ref_grads)
    for name, grad in as_ref.items():
        assert torch.allclose(grad, ref_grads[name], rtol=1e-4, atol=1e-5), name
    for bo, br in zip(ours.buffers(), ref.buffers()):
        assert torch.allclose(bo.float(), br.float(), atol=1e-6)


def _paper_vision_cfg() -> tuple[int, dict]:
    from fgclep_plugin.model.registry import config_dir

    raw = json.loads((config_dir() / "FGCLEP-ResNet1d50-BioClinicalBERT.json").read_text())
    return raw["embed_dim"], raw["vision_cfg"]


def test_paper_config_tower_is_the_merl_resnet1d50():
    """The paper config's ECG tower (its text tower needs the hub) is the MERL benchmark's ResNet1d-50: no
    stem max-pool, so 313 time steps before pooling for 5000 samples, and an attention-pooling head."""
    from timm.layers import AttentionPoolLatent

    embed_dim, vision_cfg = _paper_vision_cfg()
    tower = build_ecg_tower(embed_dim, vision_cfg).eval()
    assert not any(isinstance(m, nn.MaxPool1d) for m in tower.trunk.modules())
    x = torch.randn(1, 12, 5000)
    with torch.no_grad():
        steps = tower.trunk(x)
        assert steps.shape == (1, 2048, 313)
        assert tower.pool(steps).shape == (1, 256) and tower.proj(tower.pool(steps)).shape == (1, embed_dim)
    assert isinstance(tower.attn_pool.attn, AttentionPoolLatent)
    assert tower.attn_pool.attn.pos_embed.shape == (313, 256) and tower.attn_pool.attn.num_heads == 4
    with pytest.raises(ValueError, match=r"input_length = 5000 samples.*got 4000"):
        tower(x[..., :4000])


@pytest.mark.parametrize(("name", "steps"), [("FGCLEP-ResNet1d18-MiniLM", 79), ("FGCLEP-Tiny", 79)])
def test_small_configs_keep_the_torchvision_layout(name, steps):
    from fgclep_plugin.model.registry import config_dir

    raw = json.loads((config_dir() / f"{name}.json").read_text())
    tower = build_ecg_tower(raw["embed_dim"], raw["vision_cfg"]).eval()
    assert tower.attn_pool is None and isinstance(tower.trunk.stem[-1], nn.MaxPool1d)
    with torch.no_grad():
        assert tower.trunk(torch.randn(1, 12, 2500)).shape[-1] == steps == tower.trunk.output_length(2500)


@pytest.mark.parametrize("length", [900, 999, 1000, 1001, 5000])
@pytest.mark.parametrize("stem_pool", [True, False])
def test_trunk_output_length_matches_the_trunk(length, stem_pool):
    tower = build_ecg_tower(8, _cfg(arch="resnet1d18", width=4, stem_pool=stem_pool)).eval()
    with torch.no_grad():
        assert tower.trunk(torch.randn(1, 12, length)).shape[-1] == tower.trunk.output_length(length)


def test_layout_fields_are_part_of_the_architecture_check():
    """Same weight shapes with and without the stem max-pool: only the stored vision_cfg tells them apart, and
    loading one into the other names the field. Old state dicts (no layout fields stored) load as before."""
    plain, merl_trunk = _small(), _small(stem_pool=False)
    with pytest.raises(RuntimeError, match=r"stem_pool: False vs True"):
        plain.load_state_dict(merl_trunk.state_dict())
    with pytest.raises(RuntimeError, match=r"pool: 'attention' vs 'avg'"):
        plain.load_state_dict(_small(pool="attention", attn_dim=16).state_dict())
    with pytest.raises(RuntimeError, match=r"attn_heads: 2 vs 4"):
        _small(pool="attention", attn_dim=16).load_state_dict(
            _small(pool="attention", attn_dim=16, attn_heads=2).state_dict()
        )
    # a state dict written before the layout fields existed: its stored vision_cfg does not name them
    old = plain.state_dict()
    cfg = json.loads(bytes(old["ecg_vision_cfg"].tolist()).decode())
    for key in ("stem_pool", "attn_dim", "attn_heads"):
        del cfg[key]
    old["ecg_vision_cfg"] = torch.tensor(list(json.dumps(cfg).encode()), dtype=torch.uint8)
    restored = _small()
    restored.load_state_dict(old)
    assert torch.equal(restored.proj.weight, plain.proj.weight)
    with pytest.raises(RuntimeError, match=r"stem_pool: True vs False"):
        _small(stem_pool=False).load_state_dict(old)


def test_attention_pool_config_errors():
    with pytest.raises(ValueError, match=r"train_crop_length \(2000\) must be unset"):
        _small(pool="attention", train_crop_length=2000)
    with pytest.raises(ValueError, match=r"attn_dim \(30\) must be a positive multiple of attn_heads \(4\)"):
        _small(pool="attention", attn_dim=30)
    with pytest.raises(ValueError, match="avg, max, avgmax or attention"):
        _small(pool="cls")


def test_lock_keeps_the_attention_pool_in_the_head_group():
    tower = _small(pool="attention", attn_dim=16)
    tower.lock(unlocked_groups=1)
    trainable = {n.split(".")[0] for n, p in tower.named_parameters() if p.requires_grad}
    assert trainable == {"attn_pool", "proj"}


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


def test_transform_crops_and_standardises_per_lead():
    rng = np.random.default_rng(0)
    ecg = (rng.standard_normal((12, 5000)) * np.arange(1, 13)[:, None] + 3).astype(np.float16)
    cfg = EcgTowerCfg(sample_rate=500, input_length=4800, norm="per_lead")
    out = EcgTransform(cfg, is_train=False)(ecg)
    assert out.dtype == torch.float32 and out.shape == (12, 4800)
    x = ecg.astype(np.float64)[:, 100:4900]  # centre window
    expected = (x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, ddof=1, keepdims=True)
    np.testing.assert_allclose(out.numpy(), expected, atol=2e-5)
    assert EcgTransform(EcgTowerCfg(sample_rate=250, input_length=2400))(ecg).shape == (12, 2400)


def _gain_db(freq_hz: float, sample_rate: int = 250) -> float:
    """Gain (dB) of the transform's resampling for a 500 Hz sinusoid of ``freq_hz`` (fixed norm: no scaling),
    from the RMS of the middle of the output (away from the edges)."""
    t = np.arange(5000) / 500
    ecg = np.tile(np.cos(2 * np.pi * freq_hz * t + 0.3), (12, 1)).astype(np.float32)
    n_out = 5000 * sample_rate // 500
    cfg = EcgTowerCfg(sample_rate=sample_rate, input_length=n_out, norm="fixed", mean=[0.0], std=[1.0])
    out = EcgTransform(cfg)(ecg).numpy()[:, n_out // 10 : -n_out // 10]
    return float(20 * np.log10(np.sqrt(2) * out.std(axis=1).max() + 1e-12))


@pytest.mark.parametrize("freq", [0.5, 10.0, 40.0, 80.0])
def test_decimation_passes_the_ecg_band(freq):
    assert abs(_gain_db(freq)) < 1.0


@pytest.mark.parametrize("freq", [125.0, 150.0, 180.0, 200.0, 240.0])
def test_decimation_stops_what_would_alias(freq):
    """Above the new Nyquist (125 Hz at 250 Hz) nothing may fold back into the ECG band: mains harmonics (150,
    180, 200, 240 Hz) at least 40 dB down (a 2-sample mean passed 150 Hz at -4.6 dB, 125 Hz at -3 dB)."""
    assert _gain_db(freq) < -40.0


def test_decimation_by_five_is_anti_aliased_too():
    assert abs(_gain_db(20.0, sample_rate=100)) < 1.0 and _gain_db(60.0, sample_rate=100) < -40.0


def test_flat_lead_is_not_blown_up_to_full_scale():
    """A disconnected lead (2 uV of noise) must stay near zero after per-lead standardisation, not come out at the
    scale of a real lead; leads with a real ECG's amplitude are standardised as before."""
    rng = np.random.default_rng(1)
    ecg = (rng.standard_normal((12, 5000)) * 0.3).astype(np.float32)
    ecg[4] = rng.standard_normal(5000) * 0.002
    out = EcgTransform(EcgTowerCfg(sample_rate=500, input_length=5000))(ecg)
    assert float(out[4].std()) < 0.2
    np.testing.assert_allclose(out[[0, 5, 11]].std(dim=1).numpy(), 1.0, atol=1e-3)


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


@pytest.mark.parametrize("norm", ["per_lead", "fixed"])
def test_batch_transform_equals_the_transform_of_each_ecg(norm):
    rng = np.random.default_rng(2)
    ecgs = [(rng.standard_normal((12, 5200)) * rng.uniform(0.1, 2)).astype(np.float16) for _ in range(5)]
    cfg = EcgTowerCfg(sample_rate=250, input_length=2500, norm=norm, mean=[0.1], std=[0.5])
    train, val = ecg_transforms(cfg)
    out = batch_to_tensor(ecgs, val)
    assert out is not None and out.shape == (5, 12, 2500)
    assert torch.equal(out, torch.stack([ecg_to_tensor(e, val) for e in ecgs]))
    # what cannot go as one batch is left to the per-ECG transform (None): a bad ECG (the per-ECG error names
    # it), mixed lengths or dtypes, a training transform (a window per ECG), no EcgTransform
    bad = [e.copy() for e in ecgs]
    bad[3][4, 100] = np.nan
    assert batch_to_tensor(bad, val) is None
    with pytest.raises(ValueError, match="non-finite"):
        ecg_to_tensor(bad[3], val)
    assert batch_to_tensor([*ecgs, ecgs[0][:, :5000]], val) is None
    assert batch_to_tensor([*ecgs, ecgs[0].astype(np.float32)], val) is None
    assert batch_to_tensor(ecgs, train) is None and batch_to_tensor(ecgs, None) is None
    with pytest.raises(ValueError, match="per ECG"):
        train.batch(torch.zeros(2, 12, 5000))


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
