"""How stage-2 features enter training (``--ecg-feature-injection``): the multi-positive sigmoid loss against an
independent numpy computation, the batch's positives, the caption draw, and real open_clip runs in each mode."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from open_clip.loss import SigLipLoss

from fgclep_plugin.augment.oracle import perfect_features
from fgclep_plugin.augment.rewrite import PreparedShard, augmented_text
from fgclep_plugin.ecgdata.reader import iter_samples
from fgclep_plugin.ecgdata.records import CanonicalSample
from fgclep_plugin.ecgdata.shards import write_one_shard
from fgclep_plugin.model.loss import MultiPositiveLoss, multi_positive_sigmoid_loss
from fgclep_plugin.train import main
from fgclep_plugin.training.injection import caption_choice, collate_multi_positive


def _numpy_loss(e: np.ndarray, t: np.ndarray, pos: np.ndarray, scale: float, bias: float) -> float:
    total = 0.0
    for i in range(e.shape[0]):
        for j in range(t.shape[0]):
            z = 1.0 if pos[i, j] else -1.0
            logit = scale * float(e[i] @ t[j]) + bias
            total += math.log1p(math.exp(-z * logit))  # -log sigmoid(z * logit)
    return total / e.shape[0]


def test_multi_positive_loss_matches_numpy_and_siglip():
    g = torch.Generator().manual_seed(0)
    e = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(9, 8, generator=g), dim=-1)
    pos = torch.zeros(5, 9)
    pos[torch.arange(5), torch.arange(5)] = 1
    pos[0, 5] = pos[2, 5] = pos[3, 7] = pos[4, 8] = 1
    scale, bias = torch.tensor(7.0), torch.tensor(-3.0)
    got = float(multi_positive_sigmoid_loss(e, t, pos, scale, bias))
    assert got == pytest.approx(_numpy_loss(e.numpy(), t.numpy(), pos.numpy(), 7.0, -3.0), rel=1e-5)
    # one positive per ECG and no extra texts: open_clip's SigLIP loss
    eye = torch.eye(5)
    siglip = float(SigLipLoss()(e, t[:5], scale, bias))
    assert float(multi_positive_sigmoid_loss(e, t[:5], eye, scale, bias)) == pytest.approx(siglip, rel=1e-5)
    # the module: FNM on the B report columns only, the sigmoid term as above
    loss = MultiPositiveLoss(fnm_lambda=0.5)
    out = loss(e, t, scale, bias, positives=pos, output_dict=True)
    assert float(out["contrastive_loss"]) == pytest.approx(got, rel=1e-6)
    assert float(out["fnm_loss"]) == pytest.approx(0.5 * float(loss.fnm(e, t[:5])), rel=1e-6)


def _tokenizer(texts):
    """Stand-in tokenizer: one row per text, the text's length then its first characters' codes."""
    rows = [[len(s)] + [ord(c) for c in s[:5].ljust(5)] for s in texts]
    return torch.tensor(rows, dtype=torch.long)


def test_multi_positive_batch_marks_each_ecgs_report_and_features():
    samples = [
        (torch.zeros(2), "report a.", ["wide qrs", "long pr"]),
        (torch.ones(2), "report b.", []),
        (torch.ones(2), "report c.", ["long pr"]),
    ]
    ecgs, text = collate_multi_positive(_tokenizer)(samples)
    assert ecgs.shape == (3, 2)
    tokens, member = text[:, :-3], text[:, -3:]
    assert tokens.shape[0] == 5  # three reports, then the two distinct features
    assert tokens[:, 0].tolist() == [9, 9, 9, len("wide qrs"), len("long pr")]
    assert member.T.tolist() == [[1, 0, 0, 1, 1], [0, 1, 0, 0, 0], [0, 0, 1, 0, 1]]


def test_caption_is_the_report_or_one_kept_feature_drawn_per_epoch():
    s = {"__key__": "k1", "text": "r. a, b.", "meta": {"stage2": {"report": "r.", "kept": ["a", "b"]}}}
    draws = Counter(caption_choice(s, 0, epoch) for epoch in range(600))
    assert set(draws) == {"r.", "a", "b"} and min(draws.values()) > 150
    assert [caption_choice(s, 0, e) for e in range(20)] == [caption_choice(s, 0, e) for e in range(20)]
    assert caption_choice({"__key__": "k", "text": "plain.", "meta": {}}, 0, 3) == "plain."


@pytest.fixture(scope="module")
def stage2_shards(tmp_path_factory) -> str:
    """Two synthetic shards rewritten as perfect-features stage-2 output (no model needed)."""
    from fgclep_plugin.synth.corpus import generate_corpus

    root = tmp_path_factory.mktemp("inj")
    urls = generate_corpus(root / "syn", {"train": 32}, seed=3, maxcount=16)["train"]["urls"]
    out = root / "s2"
    out.mkdir()
    for k, url in enumerate(sorted((root / "syn" / "train").glob("*.tar"))):
        entries = []
        for s in iter_samples(str(url)):
            kept = perfect_features(s["meta"], s["text"], s["__key__"])
            meta = {**s["meta"], "stage2": {"report": s["text"], "kept": kept}}
            entries.append(
                (s["__key__"], CanonicalSample(s["__key__"], s["ecg"], augmented_text(s["text"], kept), meta))
            )
        src = PreparedShard(entries)
        write_one_shard(src, src.items(), str(out / f"s2-{k:06d}.tar"), str(out / f".s2-{k}.json"))
    assert urls
    return str(out / "s2-{000000..000001}.tar")


@pytest.mark.parametrize("mode", ["caption", "multi-positive"])
def test_training_runs_in_each_mode(stage2_shards, tmp_path, monkeypatch, mode):
    seen = []
    forward = MultiPositiveLoss.forward

    def recording(self, image_features, text_features, logit_scale, logit_bias, positives=None, **kw):
        seen.append((image_features.shape[0], text_features.shape[0], positives))
        return forward(self, image_features, text_features, logit_scale, logit_bias, positives, **kw)

    monkeypatch.setattr(MultiPositiveLoss, "forward", recording)
    argv = [
        "--model", "FGCLEP-Tiny", "--train-data", stage2_shards, "--train-num-samples", "32",
        "--batch-size", "8", "--workers", "0", "--lr", "1e-3", "--warmup", "1", "--epochs", "1",
        "--device", "cpu", "--precision", "fp32", "--seed", "0", "--logs", str(tmp_path), "--name", "run",
        "--ecg-feature-injection", mode, "--loss-log", str(tmp_path / "losses"), "--fnm-lambda", "0.1",
    ]  # fmt: skip
    assert main(argv) is None
    rows = [json.loads(x) for x in Path(f"{tmp_path / 'losses'}-rank0.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(np.isfinite(r["contrastive_loss"]) for r in rows)
    assert (tmp_path / "run" / "checkpoints" / "epoch_1.pt").exists()
    if mode == "multi-positive":
        assert len(seen) == 4
        for b, m, pos in seen:  # texts: the 8 reports, then the batch's distinct kept features
            assert b == 8 and m > 8 and pos.shape == (8, m)
            assert torch.equal(pos[:, :8], torch.eye(8)) and pos[:, 8:].sum(0).min() >= 1
    else:
        assert seen == []  # caption batches go through FgClepLoss: one text per ECG
