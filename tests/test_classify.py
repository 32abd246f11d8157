"""``fgclep classify`` / ``fgclep_plugin.classify`` on real records: WFDB (LUDB), a Challenge ``.mat`` (CinC 2021
Georgia), ``.npy`` files written from a record in other lead orders, layouts and sampling rates."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.signal import resample_poly

import fgclep_plugin
from fgclep_plugin.cli import main
from fgclep_plugin.deploy.classify import FEATURE_PHRASES, canonical_ecg
from fgclep_plugin.ecgdata.ecg import canonicalize
from fgclep_plugin.ecgdata.sources.challenge import ChallengeSource
from fgclep_plugin.ecgdata.sources.ludb import LudbSource
from fgclep_plugin.evaluate.tasks import LUDB_CLASSES, get_task
from fgclep_plugin.model.zeroshot import ECG_TEMPLATES
from fgclep_plugin.synth.vocabulary import DIAGNOSES

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
LUDB = SHARED / "ludb"
LUDB_HEA = LUDB / "data" / "1.hea"
CINC = SHARED / "cinc2021"
MAT = CINC / "E07500.mat"
MODEL = "FGCLEP-Tiny"
CLASSES = ["sinus_rhythm", "atrial_fibrillation", "left bundle branch block"]

pytestmark = pytest.mark.skipif(not LUDB_HEA.is_file() or not MAT.is_file(), reason="../shared/data missing")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    """FGCLEP-Tiny, seeded random weights, with a SigLIP scale and bias moved off their initial values (so
    probabilities spread over (0, 1) and a wrong scale or bias would show)."""
    import open_clip

    fgclep_plugin.register()
    torch.manual_seed(3)
    model = open_clip.create_model(MODEL)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(7.0))
        model.logit_bias.fill_(1.5)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def ludb_record():
    """LUDB record 1 as the LUDB reader returns it: ``[12, 5000]`` mV at 500 Hz, leads ``i, ii, ... v6``."""
    return LudbSource(LUDB).load("1")


def _classify(files, ckpt, **kw):
    kw = {"model": MODEL, "checkpoint": ckpt, "device": "cpu", **kw}
    return fgclep_plugin.classify([str(f) for f in files], **kw)


def test_probabilities_equal_an_independent_computation_with_the_models_encoders(ckpt):
    import open_clip

    results = _classify([LUDB_HEA, MAT], ckpt, classes=CLASSES, features=True, top=4, batch_size=1)
    assert [r.ok for r in results] == [True, True]

    model, _, preprocess = open_clip.create_model_and_transforms(MODEL)
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    model.eval()
    tok = open_clip.get_tokenizer(MODEL)
    t, b = float(model.logit_scale.detach().exp()), float(model.logit_bias.detach())
    assert abs(t - 7.0) < 1e-4 and abs(b - 1.5) < 1e-6
    with torch.no_grad():
        classes = []
        for c in CLASSES:  # each template normalised, averaged, normalised again
            e = model.encode_text(
                tok([tpl.format(c.replace("_", " ")) for tpl in ECG_TEMPLATES]), normalize=True
            )
            classes.append(torch.nn.functional.normalize(e.mean(0), dim=-1))
        classes = torch.stack(classes)  # [C, D]
        phrases = model.encode_text(tok(list(FEATURE_PHRASES)), normalize=True)  # [F, D]
        for r, rec in zip(results, [LudbSource(LUDB).load("1"), ChallengeSource(CINC).load("E07500")]):
            ecg, _ = canonicalize(rec, min_seconds=5.0)
            x = preprocess(torch.from_numpy(ecg.astype(np.float32)))[None]
            emb = model.encode_image(x, normalize=True)[0]
            prob = torch.sigmoid(t * (classes @ emb) + b).numpy()
            np.testing.assert_allclose([r.probabilities[c] for c in CLASSES], prob, atol=1e-5)
            assert list(r.probabilities) == CLASSES
            fprob = torch.sigmoid(t * (phrases @ emb) + b).numpy()
            best = np.argsort(-fprob)[:4]
            assert [f["phrase"] for f in r.features] == [FEATURE_PHRASES[j] for j in best]
            np.testing.assert_allclose([f["probability"] for f in r.features], fprob[best], atol=1e-5)
            assert r.device == "cpu" and r.record["fs_original"] == 500.0
    assert results[0].record["source"] == "ludb" and "Sinus bradycardia" in results[0].record["report"]
    assert "adc_gain_correction" not in results[0].record  # the reader's meta stays out; its signal is used


def _npy(path: Path, x: np.ndarray) -> str:
    np.save(path, x.astype(np.float32))
    return str(path)


def test_lead_order_layout_and_sampling_rate_of_npy_files(ckpt, ludb_record, tmp_path):
    sig, names = ludb_record.signal, list(ludb_record.lead_names)
    perm = np.random.default_rng(0).permutation(12)
    shuffled_names = [names[i].upper() for i in perm]  # and another spelling: 'AVR', 'V1'
    files = {
        "hea": (str(LUDB_HEA), None, None),
        "npy": (_npy(tmp_path / "a.npy", sig), 500, names),
        "shuffled": (_npy(tmp_path / "b.npy", sig[perm]), 500, shuffled_names),
        "transposed": (_npy(tmp_path / "c.npy", sig[perm].T), 500, shuffled_names),
        "250hz": (_npy(tmp_path / "d.npy", resample_poly(sig, 1, 2, axis=1)), 250, names),
        "1000hz": (_npy(tmp_path / "e.npy", resample_poly(sig, 2, 1, axis=1)), 1000, names),
    }
    out = {}
    for key, (f, fs, leads) in files.items():
        (r,) = _classify([f], ckpt, classes=CLASSES, fs=fs, leads=leads)
        assert r.ok, r.error
        out[key] = np.array([r.cosines[c] for c in CLASSES])
        assert r.record["fs_original"] == (fs or 500)
        assert r.record["seconds_original"] == pytest.approx(10.0) and r.record["padded_s"] == 0
        ecg, _ = canonical_ecg(f, fs, leads)
        assert ecg.shape == (12, 5000)  # the same length into the model's transform, whatever the rate
    reference = canonical_ecg(files["npy"][0], 500, names)[0]
    for key in ("shuffled", "transposed"):  # leads matched by name: the very same canonical ECG
        np.testing.assert_array_equal(canonical_ecg(*files[key])[0], reference)
        np.testing.assert_allclose(out[key], out["npy"], atol=1e-6)
    np.testing.assert_allclose(out["npy"], out["hea"], atol=1e-6)  # the .npy holds the reader's signal
    for key in ("250hz", "1000hz"):  # resampled to 500 Hz: the same ECG up to the filters
        x = canonical_ecg(*files[key])[0].astype(np.float32)
        corr = np.corrcoef(x[1], reference[1].astype(np.float32))[0, 1]
        assert corr > 0.99, (key, corr)
        np.testing.assert_allclose(out[key], out["npy"], atol=0.02)
    # without a rate the same file is not guessed at
    (r,) = _classify([files["shuffled"][0]], ckpt, classes=CLASSES)
    assert not r.ok and r.reason == "missing-fs-or-leads" and "b.npy" in r.error


def _bad_files(tmp_path: Path) -> tuple[str, str]:
    """A corrupt .npy and a WFDB record whose signal file is cut to 100 bytes."""
    bad_npy = tmp_path / "corrupt.npy"
    bad_npy.write_bytes(b"\x93NUMPY garbage, not an array")
    shutil.copy(LUDB_HEA, tmp_path / "cut.hea")
    text = (tmp_path / "cut.hea").read_text().replace("1.dat", "cut.dat").splitlines()
    text[0] = text[0].replace("1 12", "cut 12", 1)
    (tmp_path / "cut.hea").write_text("\n".join(text) + "\n")
    (tmp_path / "cut.dat").write_bytes((LUDB / "data" / "1.dat").read_bytes()[:100])
    return str(bad_npy), str(tmp_path / "cut.hea")


def test_cli_json_and_csv_name_each_bad_file_once_and_classify_the_rest(ckpt, tmp_path, capsys):
    bad_npy, cut = _bad_files(tmp_path)
    out = tmp_path / "out.json"
    argv = ["classify", str(LUDB_HEA), bad_npy, str(MAT), cut, "--model", MODEL, "--checkpoint", ckpt]
    argv += ["--classes", ",".join(CLASSES), "--features", "--top", "2", "--fs", "500", "--leads", "I,II"]
    assert main([*argv, "--json", "--out", str(out), "--device", "cpu", "--batch-size", "2"]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("fgclep classify: rejected")]
    assert len(err) == 2 and bad_npy in err[0] and cut in err[1], err
    doc = json.loads(out.read_text())
    assert doc["device"] == "cpu" and doc["model"] == MODEL and doc["checkpoint"] == ckpt
    assert doc["logit_bias"] == pytest.approx(1.5) and doc["logit_scale"] == pytest.approx(7.0, rel=1e-5)
    assert [r["file"] for r in doc["results"]] == [str(LUDB_HEA), str(MAT)]
    assert [r["file"] for r in doc["rejects"]] == [bad_npy, cut]
    assert doc["rejects"][0]["reason"] == "unreadable" and doc["records_per_s"] > 0
    for r in doc["results"]:
        assert list(r["probabilities"]) == CLASSES and len(r["features"]) == 2 and r["device"] == "cpu"

    assert main([*argv, "--csv", "--device", "cpu"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    classes = [r for r in rows if r["kind"] == "class"]
    assert [(r["file"], r["name"]) for r in classes] == [
        (str(f), c) for f in (LUDB_HEA, MAT) for c in CLASSES
    ]
    by_json = {(r["file"], c): p for r in doc["results"] for c, p in r["probabilities"].items()}
    for r in classes:
        assert float(r["probability"]) == pytest.approx(by_json[(r["file"], r["name"])], rel=1e-5)
    assert sum(r["kind"] == "feature" for r in rows) == 4
    rejected = [r for r in rows if r["kind"] == "rejected"]
    assert [r["file"] for r in rejected] == [bad_npy, cut] and all(r["error"] for r in rejected)
    assert {r["device"] for r in rows} == {"cpu"}

    # nothing classified: exit status 1, every file still named
    assert main(["classify", bad_npy, cut, "--model", MODEL, "--checkpoint", "none", "--classes", "a"]) == 1
    err = capsys.readouterr().err
    assert bad_npy in err and cut in err


def test_task_and_prompt_file_give_the_classes_and_the_default_device_is_recorded(ckpt, tmp_path, capsys):
    out = tmp_path / "task.json"
    argv = ["classify", str(MAT), "--model", MODEL, "--checkpoint", ckpt, "--task", "ludb-rhythm"]
    assert main([*argv, "--json", "--out", str(out)]) == 0  # no --device: cuda if available, else cpu
    doc = json.loads(out.read_text())
    from fgclep_plugin.model.device import choose_device

    assert doc["device"] == str(choose_device("auto")) == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert f"on {doc['device']}" in capsys.readouterr().err
    task = get_task("ludb-rhythm")
    assert list(doc["results"][0]["probabilities"]) == list(LUDB_CLASSES["ludb-rhythm"])
    assert doc["classes"] == {c: task.prompt_text(c) for c in task.class_names}
    assert doc["classes"]["Atrial flutter, typical"] == "typical atrial flutter"

    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"AFIB": "atrial fibrillation", "NORM": "normal ECG"}))
    info: dict = {}
    (r,) = _classify([MAT], ckpt, prompts=str(prompts), info=info)
    assert list(r.probabilities) == ["AFIB", "NORM"] and info["classes"]["NORM"] == "normal ECG"
    (r,) = _classify([MAT], ckpt, task="synth-diagnosis")  # no synthetic corpus is generated for its classes
    assert list(r.probabilities) == list(DIAGNOSES)


def test_lazy_attribute_keeps_the_package_import_cheap():
    code = (
        "import sys, fgclep_plugin\n"
        "f = fgclep_plugin.classify\n"
        "assert f.__module__ == 'fgclep_plugin.deploy.classify'\n"
        "assert 'torch' not in sys.modules and 'open_clip' not in sys.modules\n"
        "try:\n    fgclep_plugin.no_such_name\nexcept AttributeError:\n    pass\nelse:\n    raise SystemExit(1)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
