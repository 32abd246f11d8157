"""``fgclep eval zeroshot``: AUC equal to an independent computation on LUDB, ENS as the max over 13 prompts,
MERL's CKEPE strings, the bootstrap interval, and results.json / results.md over two checkpoints."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch
from eval_helpers import LUDB_SHARDS, MODEL, tiny_checkpoint
from sklearn.metrics import roc_auc_score

from fgclep_plugin.cli import main
from fgclep_plugin.ecgdata.ecg import LEADS
from fgclep_plugin.ecgdata.reader import iter_samples
from fgclep_plugin.evaluate import EvalSettings, evaluate
from fgclep_plugin.evaluate.tasks import LUDB_CLASSES, Task, get_task
from fgclep_plugin.evaluate.zeroshot import (
    bootstrap_interval,
    ckepe_prompts,
    ens_prompts,
    ens_scores,
    rank_auc,
)
from fgclep_plugin.model.registry import register
from fgclep_plugin.model.zeroshot import ECG_TEMPLATES


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return [tiny_checkpoint(d / "a.pt", seed=0), tiny_checkpoint(d / "b.pt", seed=1)]


def independent_scores(checkpoint: str, task: Task):
    """Embeddings straight from open_clip's model (not the plugin's scoring path), cosines by hand."""
    register()
    model, _, preprocess = open_clip.create_model_and_transforms(
        MODEL, pretrained=checkpoint, weights_only=True
    )
    model.eval()
    tok = open_clip.get_tokenizer(MODEL)
    samples = list(iter_samples(task.urls("test")))
    with torch.no_grad():
        x = torch.stack([preprocess(torch.from_numpy(s["ecg"].astype(np.float32))) for s in samples])
        ecg = torch.nn.functional.normalize(model.encode_image(x), dim=-1)

        def text(texts):
            return torch.nn.functional.normalize(model.encode_text(tok(texts)), dim=-1)

        words = [task.prompt_text(c) for c in task.class_names]
        templ = []
        for w in words:
            e = text([t.format(w) for t in ECG_TEMPLATES]).mean(0)
            templ.append(e / e.norm())
        templates = (ecg @ torch.stack(templ).T).numpy()
        ens = np.stack(
            [np.max(np.stack([(ecg @ text([p]).T)[:, 0].numpy() for p in ens_prompts(w)]), 0) for w in words],
            1,
        )
    targets = np.array([[int(c in task.labels(s["meta"])) for c in task.class_names] for s in samples])
    return {"templates": templates, "ens": ens}, targets


def macro(scores, targets):
    aucs = [
        roc_auc_score(targets[:, c], scores[:, c])
        for c in range(targets.shape[1])
        if 0 < targets[:, c].sum() < len(targets)
    ]
    return float(np.mean(aucs))


def test_cli_zero_shot_equals_an_independent_computation_on_ludb(checkpoints, tmp_path):
    out = tmp_path / "eval"
    argv = [
        "eval",
        "zeroshot",
        "--model",
        MODEL,
        "--task",
        "ludb-hypertrophy",
        "--ludb-data",
        str(LUDB_SHARDS),
        "--out",
        str(out),
        "--bootstrap",
        "200",
        "--quiet",
        "--prompt-set",
        "templates",
        "--prompt-set",
        "ens",
    ]
    for i, c in enumerate(checkpoints):
        argv += ["--checkpoint", f"{'CLEP' if i == 0 else 'FG-CLEP'}={c}"]
    assert main(argv) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["checkpoint_label"], r["prompt_set"]) for r in rows] == [
        ("CLEP", "templates"),
        ("CLEP", "ens"),
        ("FG-CLEP", "templates"),
        ("FG-CLEP", "ens"),
    ]
    task = get_task("ludb-hypertrophy", LUDB_SHARDS)
    for ckpt, label in zip(checkpoints, ("CLEP", "FG-CLEP")):
        scores, targets = independent_scores(ckpt, task)
        for r in (r for r in rows if r["checkpoint_label"] == label):
            assert r["value"] == pytest.approx(macro(scores[r["prompt_set"]], targets), abs=1e-5)
            assert r["interval"][0] <= r["value"] <= r["interval"][1]
            assert r["n_records"] == 50
            # LUDB 151-200 has no right ventricular / right atrial hypertrophy: skipped, with 0 positives
            assert r["skipped"] == ["Right ventricular hypertrophy", "Right atrial hypertrophy"]
            assert (
                r["per_class"]["Left ventricular hypertrophy"]["positives"] == int(targets[:, 0].sum()) == 17
            )
            assert r["per_class"]["Right atrial hypertrophy"] == {"auc": None, "positives": 0}
    md = (out / "results.md").read_text()
    assert "| FGCLEP-Tiny | FG-CLEP | ludb-hypertrophy | zero-shot | ens | macro AUC |" in md
    assert "Left ventricular hypertrophy" in md and "(17)" in md
    assert set(LUDB_CLASSES["ludb-hypertrophy"]) == set(rows[0]["per_class"])
    # the test split was embedded once per checkpoint and cached (one file per checkpoint x shard set)
    assert len(list((out / "embeddings").glob("ludb-test-000000-*.npz"))) == 2


def test_evaluate_embeds_each_checkpoint_once_for_two_tasks_without_a_cache(
    checkpoints, tmp_path, embed_counter
):
    settings = EvalSettings(
        model=MODEL,
        checkpoints={"A": checkpoints[0], "B": checkpoints[1]},
        tasks=["ludb-rhythm", "ludb-axis"],
        ludb_data=str(LUDB_SHARDS),
        cache=None,
        bootstrap=0,
        seed=0,
        batch_size=64,
        device="cpu",
        progress=False,
        prompt_sets=["templates"],
    )
    rows = evaluate(settings)
    assert embed_counter == [50, 50]  # one pass of the 50 test ECGs per checkpoint, shared by both tasks
    assert [(r["checkpoint_label"], r["task"]) for r in rows] == [
        ("A", "ludb-rhythm"),
        ("A", "ludb-axis"),
        ("B", "ludb-rhythm"),
        ("B", "ludb-axis"),
    ]
    for r in rows:
        expect = get_task(r["task"], LUDB_SHARDS)
        n = sum(expect.labels(s["meta"]) is not None for s in iter_samples(expect.urls("test")))
        assert r["n_records"] == n and set(r["per_class"]) == set(expect.class_names)
    assert not (tmp_path / "embeddings").exists()


def test_ens_score_is_the_max_over_its_13_prompts():
    assert ens_prompts("atrial fibrillation")[:2] == [
        "atrial fibrillation in lead I",
        "atrial fibrillation in lead II",
    ]
    assert len(ens_prompts("x")) == 13 == len(LEADS) + 1 and ens_prompts("x")[-1] == "x"
    g = torch.Generator().manual_seed(0)
    ecg = torch.nn.functional.normalize(torch.randn(7, 5, generator=g), dim=-1)
    prompts = torch.nn.functional.normalize(torch.randn(3 * 13, 5, generator=g), dim=-1)
    per_prompt, best = ens_scores(ecg, prompts)
    for c in range(3):
        manual = np.max([[float(ecg[i] @ prompts[c * 13 + k]) for k in range(13)] for i in range(7)], axis=1)
        np.testing.assert_allclose(best[:, c].numpy(), manual, rtol=1e-6)
        np.testing.assert_allclose(
            per_prompt[:, c, 4].numpy(), (ecg @ prompts[c * 13 + 4]).numpy(), rtol=1e-6
        )


def test_ckepe_prompts_are_merl_strings_lower_cased():
    task = Task(
        "t",
        "k",
        ("NORM", "AFIB"),
        {},
        ckepe={"NORM": "Normal ECG, Sinus rhythm.", "AFIB": "Atrial Fibrillation."},
    )
    assert ckepe_prompts(task) == ["normal ecg, sinus rhythm.", "atrial fibrillation."]
    with pytest.raises(ValueError, match="task ludb-axis has no CKEPE prompts"):
        ckepe_prompts(get_task("ludb-axis", LUDB_SHARDS))


def test_rank_auc_equals_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=(300, 4)), 1)  # many ties
    targets = (rng.random((300, 4)) < [0.5, 0.1, 0.02, 0.0]).astype(int)
    auc = rank_auc(scores, targets)
    for c in range(3):
        assert auc[c] == pytest.approx(roc_auc_score(targets[:, c], scores[:, c]), abs=1e-12)
    assert np.isnan(auc[3])


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_more_records():
    rng = np.random.default_rng(1)
    widths = []
    for n in (100, 3000):
        targets = (rng.random((n, 2)) < 0.3).astype(int)
        scores = targets + rng.normal(scale=1.5, size=(n, 2))
        point = float(np.mean(rank_auc(scores, targets)))
        lo, hi = bootstrap_interval(scores, targets, n=300, seed=0)
        assert lo < point < hi
        widths.append(hi - lo)
        assert bootstrap_interval(scores, targets, n=300, seed=0) == (lo, hi)  # seeded
    assert widths[1] < widths[0] / 3  # ~ 1/sqrt(30) of the width


def test_shard_identities_local_file_urls_and_remote_without_validators(tmp_path):
    """Local shards keep their (real path, size, mtime_ns) identity, a ``file:`` URL names the same file; a
    ``pipe:`` command or a remote store reporting no ETag / modification time gets no disk-cache key."""
    import types
    import uuid

    import fsspec

    from fgclep_plugin.evaluate.zeroshot import shard_files, shards_cache_key

    path = LUDB_SHARDS / "ludb-test-000000.tar"
    st = path.stat()
    local = [(str(path.resolve()), st.st_size, st.st_mtime_ns)]
    assert shard_files(str(path)) == shard_files(f"file://{path}") == local
    checkpoint = tiny_checkpoint(tmp_path / "c.pt")
    loaded = types.SimpleNamespace(checkpoint=checkpoint, name=MODEL, precision="fp32")
    assert shards_cache_key(loaded, str(path)) == shards_cache_key(loaded, f"file:{path}") is not None

    fs, root = fsspec.filesystem("memory"), f"/zeroshot-{uuid.uuid4().hex}"
    fs.pipe(f"{root}/s-000000.tar", path.read_bytes())  # memory files report a size, no validator
    try:
        remote = f"memory://{root}/s-000000.tar"
        assert shard_files(remote) == [(remote, st.st_size, None)]
        assert shard_files(f"memory://{root}/gone.tar") == [(f"memory://{root}/gone.tar", None, None)]
        assert shards_cache_key(loaded, remote) is None
        assert shards_cache_key(loaded, f"pipe:cat {path}") is None
        assert shards_cache_key(loaded, f"{path}::{remote}") is None  # one shard without identity: no key
    finally:
        fs.rm(root, recursive=True)
