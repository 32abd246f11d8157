"""fgclep export: a checkpoint as open_clip's local-dir folder loads offline to the same embeddings; the
config names no package path; the model card lists the run and results; bad input fails in one line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers / huggingface_hub are imported

import pytest
import torch

from fgclep_plugin.cli import main
from fgclep_plugin.deploy.export import CONFIG_NAME, WEIGHTS_NAME
from fgclep_plugin.ecgdata.reader import iter_samples

ROOT = Path(__file__).resolve().parents[1]
LUDB_TEST = str(ROOT / "shards/ludb/ludb-test-000000.tar")
TINY, MINILM = "FGCLEP-Tiny", "FGCLEP-ResNet1d18-MiniLM"
SENTENCES = [
    "sinus rhythm. normal ecg.",
    "atrial fibrillation with rapid ventricular response",
    "st elevation",
]
PARAMS = "model: FGCLEP-Tiny\ntrain_data: data/synth/train/synth-train-{000000..000001}.tar\nepochs: 4\nlr: 0.0003\n"


def _checkpoint(run: Path, name: str, seed: int = 0) -> Path:
    """An open_clip-style training checkpoint of random weights (fixed seed) in ``run/checkpoints/``."""
    import open_clip

    import fgclep_plugin

    fgclep_plugin.register()
    torch.manual_seed(seed)
    model, _, _ = open_clip.create_model_and_transforms(name)
    path = run / "checkpoints" / "epoch_4.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": model.state_dict(), "epoch": 4}, path)
    return path


def _results(run: Path, checkpoint: Path) -> None:
    row = {"checkpoint": str(checkpoint), "checkpoint_label": "tiny", "task": "synth-diagnosis"}
    row.update(protocol="zero-shot", prompt_set="templates", metric="macro AUC", value=0.8125)
    row.update(interval=[0.75, 0.875], n_records=500, per_class={}, skipped=[])
    (run / "results.json").write_text(json.dumps({"meta": {}, "rows": [row]}))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(checkpoint, export folder) of FGCLEP-Tiny, exported through the command from a run folder with
    params.txt and results.json."""
    root = tmp_path_factory.mktemp("tiny")
    run = root / "run"
    ckpt = _checkpoint(run, TINY)
    (run / "params.txt").write_text(PARAMS)
    _results(run, ckpt)
    out = root / "export"
    assert main(["export", str(ckpt), "--model", TINY, "--out", str(out)]) == 0
    return ckpt, out


def _embeddings(model, preprocess, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """ECG embeddings of two real LUDB records and text embeddings of SENTENCES."""
    ecgs = []
    for sample in iter_samples(LUDB_TEST):
        ecgs.append(preprocess(torch.from_numpy(sample["ecg"].astype("float32"))))
        if len(ecgs) == 2:
            break
    model.eval()
    with torch.no_grad():
        return model.encode_image(torch.stack(ecgs), normalize=True), model.encode_text(
            tokenizer(SENTENCES), normalize=True
        )


def _assert_round_trip(ckpt: Path, out: Path, name: str) -> None:
    import open_clip

    from fgclep_plugin.model.scoring import load_model

    loaded = load_model(name, str(ckpt))
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    assert type(preprocess) is type(loaded.preprocess)  # the plugin's ECG transform, not an image one
    assert torch.equal(tokenizer(SENTENCES), loaded.tokenizer(SENTENCES))
    ecg_want, text_want = _embeddings(loaded.model, loaded.preprocess, loaded.tokenizer)
    ecg_got, text_got = _embeddings(model, preprocess, tokenizer)
    torch.testing.assert_close(ecg_got, ecg_want, atol=1e-6, rtol=0)
    torch.testing.assert_close(text_got, text_want, atol=1e-6, rtol=0)
    assert float(model.logit_bias.detach()) == pytest.approx(loaded.logit_bias)


def test_local_dir_round_trip_gives_the_checkpoints_embeddings(tiny):
    ckpt, out = tiny
    _assert_round_trip(ckpt, out, TINY)


def test_hf_text_tower_round_trip(tmp_path, monkeypatch):
    """The default model's Hugging Face MiniLM tower is rebuilt from the folder's config.json, wherever the
    folder is: moved after the export and named relative to the working directory, it loads the same."""
    import shutil

    ckpt = _checkpoint(tmp_path / "run", MINILM, seed=1)
    out = tmp_path / "export"
    assert main(["export", str(ckpt), "--model", MINILM, "--out", str(out)]) == 0
    assert (out / "config.json").is_file() and (out / "vocab.txt").is_file()
    text = json.loads((out / CONFIG_NAME).read_text())["model_cfg"]["text_cfg"]
    assert text["hf_model_name"] == text["hf_tokenizer_name"] == "folder:."
    moved = tmp_path / "elsewhere" / "copy"
    moved.parent.mkdir()
    shutil.move(out, moved)
    monkeypatch.chdir(moved.parent)
    _assert_round_trip(ckpt, Path("copy"), MINILM)


def test_folder_placeholder_needs_a_local_dir_folder(tmp_path):
    from fgclep_plugin.deploy.export import EXPORT_FOLDER
    from fgclep_plugin.model.registry import FOLDER_PREFIX, resolve_folder_path

    assert EXPORT_FOLDER == FOLDER_PREFIX + "."
    assert resolve_folder_path("folder:.", str(tmp_path)) == str(tmp_path)
    assert resolve_folder_path("pkg:x/y", None) == "pkg:x/y"  # not a folder: placeholder: unchanged
    with pytest.raises(FileNotFoundError, match="local-dir:FOLDER"):
        resolve_folder_path("folder:.", None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_folder_path("folder:missing", str(tmp_path))


def test_folder_layout_and_config_without_package_paths(tiny):
    _, out = tiny
    names = {p.name for p in out.iterdir()}
    assert {CONFIG_NAME, WEIGHTS_NAME, "README.md", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(n.endswith((".pt", ".bin")) for n in names)  # one weights file: open_clip picks it
    text = (out / CONFIG_NAME).read_text()
    assert "pkg:" not in text
    config = json.loads(text)
    assert config["model_cfg"]["text_cfg"]["hf_tokenizer_name"] == "folder:."  # the folder, wherever it is

    def strings(value):
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return [value] if isinstance(value, str) else []

    assert not [s for s in strings(config) if os.path.isabs(s) or str(out) in s]  # no path of this machine
    assert config["fgclep"]["checkpoint"] == "run/checkpoints/epoch_4.pt"
    assert config["model_cfg"]["vision_cfg"]["ecg_tower"] == "resnet1d"
    assert config["fgclep"]["epoch"] == 4 and config["fgclep"]["model"] == TINY
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_model_card_lists_run_settings_results_and_limits(tiny):
    _, out = tiny
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: open_clip\n")
    for expected in (
        f"# {TINY}",
        "Not for clinical use",
        "| train_data | data/synth/train/synth-train-{000000..000001}.tar |",
        "| epochs | 4 |",
        "| lr | 0.0003 |",
        "| synth-diagnosis | zero-shot | templates | macro AUC | 0.812 | 0.750-0.875 | 500 |",
        f'create_model_and_transforms("local-dir:{out}")',
        "## Intended use",
        "## Limits",
        "epoch 4",
    ):
        assert expected in card, expected


def test_card_without_run_folder_or_results_says_so(tmp_path, tiny):
    ckpt, _ = tiny
    bare = tmp_path / "model.pt"
    bare.write_bytes(ckpt.read_bytes())
    assert main(["export", str(bare), "--model", TINY, "--out", str(tmp_path / "e")]) == 0
    card = (tmp_path / "e" / "README.md").read_text()
    assert "No run folder" in card and "No measured results" in card


def _error_line(capsys) -> str:
    lines = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith("fgclep export: error:")
    ]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "not found"),
        ("unknown-model", "unknown model 'FGCLEP-Nope'"),
        ("not-a-checkpoint", "cannot read checkpoint"),
        ("other-model", f"does not match model {MINILM}"),
    ],
)
def test_bad_input_fails_in_one_line_and_writes_nothing(tmp_path, tiny, capsys, case, expected):
    ckpt, _ = tiny
    model = {"unknown-model": "FGCLEP-Nope", "other-model": MINILM}.get(case, TINY)
    if case == "missing":
        ckpt = tmp_path / "nope.pt"
    elif case == "not-a-checkpoint":
        ckpt = tmp_path / "notes.pt"
        ckpt.write_text("not a checkpoint\n")
    out = tmp_path / "out"
    assert main(["export", str(ckpt), "--model", model, "--out", str(out)]) == 1
    assert expected in _error_line(capsys)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_existing_folder_needs_force_and_is_replaced_whole(tmp_path, tiny, capsys):
    ckpt, _ = tiny
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    assert main(["export", str(ckpt), "--model", TINY, "--out", str(out)]) == 1
    assert "--force" in _error_line(capsys)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main(["export", str(ckpt), "--model", TINY, "--out", str(out), "--force"]) == 0
    assert not (out / "keep.txt").exists() and (out / WEIGHTS_NAME).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_usage_errors_exit_2(tiny):
    ckpt, _ = tiny
    with pytest.raises(SystemExit) as e:
        main(["export", str(ckpt), "--model", TINY])  # no --out
    assert e.value.code == 2


def test_push_to_hub_without_network_is_one_clear_line(tmp_path, tiny, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    ckpt, _ = tiny
    out = tmp_path / "out"
    argv = ["export", str(ckpt), "--model", TINY, "--out", str(out), "--push-to-hub", "someone/fgclep-tiny"]
    assert main(argv) == 1
    line = _error_line(capsys)
    assert "could not upload" in line and "someone/fgclep-tiny" in line and "offline" in line
    assert (out / WEIGHTS_NAME).is_file()  # the export itself is complete
    assert "hf-hub:someone/fgclep-tiny" in (out / "README.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the Hub staging folder is gone


def test_push_to_hub_without_huggingface_hub_writes_nothing(tmp_path, tiny, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import raises ImportError
    ckpt, _ = tiny
    out = tmp_path / "out"
    assert main(["export", str(ckpt), "--model", TINY, "--out", str(out), "--push-to-hub", "a/b"]) == 1
    assert "pip install huggingface_hub" in _error_line(capsys)
    assert not out.exists()


def test_push_to_hub_uploads_the_folder_with_the_repository_as_text_tower(tmp_path, tiny, monkeypatch):
    """What upload_folder receives (no upload: the hub calls are stand-ins): every file of the export, and
    a config that names the repository (open_clip reads an hf-hub: tokenizer from hf_tokenizer_name)."""
    import huggingface_hub

    from fgclep_plugin.deploy.export import push_to_hub

    _, out = tiny
    seen = {}

    def upload_folder(repo_id, folder_path, commit_message):
        seen.update(repo=repo_id, files={p.name: p.read_bytes() for p in Path(folder_path).iterdir()})
        return "https://huggingface.co/someone/fgclep-tiny/commit/0"

    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo, private, exist_ok: repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", upload_folder)
    assert push_to_hub(out, "someone/fgclep-tiny").endswith("/commit/0")
    assert seen["repo"] == "someone/fgclep-tiny"
    assert set(seen["files"]) == {p.name for p in out.iterdir()}
    assert seen["files"][WEIGHTS_NAME] == (out / WEIGHTS_NAME).read_bytes()
    config = json.loads(seen["files"][CONFIG_NAME])
    assert config["model_cfg"]["text_cfg"]["hf_tokenizer_name"] == "someone/fgclep-tiny"
    assert (
        json.loads((out / CONFIG_NAME).read_text())["model_cfg"]["text_cfg"]["hf_tokenizer_name"]
        == "folder:."
    )
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []
