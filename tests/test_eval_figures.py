"""Evaluation figures (fgclep_plugin.evaluate.figures): seeded t-SNE, label colouring, batches, PNGs of the
stated size, and ``fgclep figures`` on the LUDB test shard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from eval_helpers import LUDB_TEST
from PIL import Image

from fgclep_plugin.cli import main
from fgclep_plugin.evaluate.figures import (
    normal_abnormal_batch,
    plot_similarity,
    plot_tsne,
    primary_labels,
    random_batch,
    tsne,
)


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()  # the whole file decodes
        return im.size


def test_tsne_shape_and_determinism_with_the_seed():
    rng = np.random.default_rng(0)
    emb = np.concatenate([rng.normal(0, 1, (30, 16)), rng.normal(6, 1, (30, 16))]).astype(np.float32)
    a, b = tsne(emb, seed=3), tsne(emb, seed=3)
    assert a.shape == (60, 2)
    np.testing.assert_array_equal(a, b)
    # the two clusters stay apart in the map: every point is nearer its own cluster's centre
    centres = np.stack([a[:30].mean(0), a[30:].mean(0)])
    nearest = np.linalg.norm(a[:, None] - centres[None], axis=-1).argmin(1)
    assert nearest.tolist() == [0] * 30 + [1] * 30
    with pytest.raises(ValueError, match="at least 4"):
        tsne(emb[:3])


def test_primary_label_is_the_rarest_of_each_sample():
    labels = [
        ["sinus_rhythm", "normal_ecg"],
        ["sinus_rhythm", "lvh"],
        ["sinus_rhythm", "normal_ecg"],
        [],
        ["af"],
    ]
    assert primary_labels(labels) == ["normal_ecg", "lvh", "normal_ecg", "no label", "af"]


def test_batches_are_seeded_and_normal_first():
    assert np.array_equal(random_batch(100, 10, 5), random_batch(100, 10, 5))
    assert len(set(random_batch(100, 10, 5).tolist())) == 10
    is_normal = [i % 3 == 0 for i in range(30)]
    idx, split = normal_abnormal_batch(is_normal, 9, seed=1)
    assert split == 4 and len(idx) == 9 and len(set(idx.tolist())) == 9
    assert all(is_normal[i] for i in idx[:4]) and not any(is_normal[i] for i in idx[4:])
    with pytest.raises(ValueError, match="needs 12 normal and 12 abnormal ECGs; the set has 10 and 20"):
        normal_abnormal_batch(is_normal, 24)
    with pytest.raises(ValueError, match="at least 200 samples"):
        random_batch(100, 200)


def test_figure_pngs_have_the_stated_pixel_size(tmp_path):
    rng = np.random.default_rng(0)
    p = plot_tsne(rng.normal(size=(40, 2)), ["a"] * 20 + ["b"] * 19 + ["c"], tmp_path / "t.png", "t", dpi=40)
    assert _png_size(p) == (11 * 40, int(7.5 * 40))
    s = rng.random((6, 6))
    texts = [f"report number {i} " * 8 for i in range(6)]
    p = plot_similarity((s + s.T) / 2, texts, tmp_path / "s.png", "s", split=3, dpi=40)
    assert _png_size(p) == (15 * 40, 10 * 40)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temporary file


def test_figures_cli_on_ludb(tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["figures", "--data", LUDB_TEST, "--model", "FGCLEP-Tiny", "--checkpoint", "none"]
    argv += ["--label-key", "Rhythms"]
    argv += ["--normal-class", "Sinus rhythm", "--batch", "8", "--out", str(out), "--dpi", "30", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((out / "figures.json").read_text())
    assert _png_size(out / "tsne_Rhythms.png") == (330, 225)
    assert _png_size(out / "similarity_random.png") == (450, 300)
    assert _png_size(out / "similarity_normal_abnormal.png") == (450, 300)
    assert manifest["tsne"]["points"] == 50 and str(out / "tsne_Rhythms.png") in printed
    from fgclep_plugin.ecgdata.reader import iter_samples

    rhythms = {s["__key__"]: s["meta"]["labels"]["Rhythms"] for s in iter_samples(LUDB_TEST)}
    batch = manifest["similarity_normal_abnormal"]
    assert batch["normal"] == 4
    assert [("Sinus rhythm" in rhythms[k]) for k in batch["keys"]] == [True] * 4 + [False] * 4
