"""fgclep demo: stage bookkeeping (resume, re-run on a changed setting), the table, and the whole --fast demo."""

from __future__ import annotations

import argparse
import json
import tarfile
from pathlib import Path

import pytest

from fgclep_plugin import demo
from fgclep_plugin.augment.rules import RULES
from fgclep_plugin.demo.config import STAGE2_KINDS, STAGE3_INJECTION
from fgclep_plugin.ecgdata.atomic import atomic_write_json
from fgclep_plugin.train import split_argv
from fgclep_plugin.training.injection import INJECTIONS


def _stage(st: demo.Stages, tmp: Path, name: str, settings: dict, inputs: list[str], calls: list[str]) -> str:
    out = tmp / name

    def fn() -> None:
        calls.append(name)
        out.mkdir(exist_ok=True)
        (out / "done").write_text(json.dumps(settings))

    return st.run(name, settings, inputs, [out / "done"], fn, clear=[out])


def test_stages_resume_and_rerun_what_a_changed_setting_affects(tmp_path):
    def pipeline(a: int, b: int) -> list[str]:
        calls: list[str] = []
        st = demo.Stages(tmp_path, log=lambda m: None)
        _stage(st, tmp_path, "one", {"a": a}, [], calls)
        _stage(st, tmp_path, "two", {"b": b}, ["one"], calls)
        _stage(st, tmp_path, "three", {}, ["one", "two"], calls)
        assert st.ran == calls
        return calls

    assert pipeline(1, 1) == ["one", "two", "three"]
    assert pipeline(1, 1) == []  # everything resumed
    assert pipeline(1, 2) == ["two", "three"]  # b changed: stage one kept
    assert json.loads((tmp_path / "two" / "done").read_text()) == {"b": 2}
    assert pipeline(3, 2) == ["one", "two", "three"]  # a changed: its dependents re-run too
    (tmp_path / "two" / "done").unlink()  # an output lost: that stage re-runs; its digest is unchanged
    assert pipeline(3, 2) == ["two"]
    (tmp_path / "two" / "stale").write_text("x")
    (tmp_path / ".demo" / "two.json").unlink()  # interrupted (no manifest): the partial output is cleared
    assert pipeline(3, 2) == ["two"] and not (tmp_path / "two" / "stale").exists()


def test_stage_without_its_output_is_an_error_and_not_recorded(tmp_path):
    st = demo.Stages(tmp_path, log=lambda m: None)
    with pytest.raises(RuntimeError, match="stage x finished without its outputs"):
        st.run("x", {}, [], [tmp_path / "missing"], lambda: None)
    assert not (tmp_path / ".demo" / "x.json").exists()


def test_generator_spec_and_fast_defaults():
    assert demo.parse_generator("kb") == ("kb", None)
    assert demo.parse_generator("vllm:/models/llama") == ("vllm", "/models/llama")
    assert demo.parse_generator("openai:http://127.0.0.1:8000/v1") == ("openai", "http://127.0.0.1:8000/v1")
    with pytest.raises(argparse.ArgumentTypeError, match="kb, vllm:<model> or openai:<url>"):
        demo.parse_generator("gpt")
    p = argparse.ArgumentParser()
    demo.add_arguments(p)
    args = p.parse_args(["--fast", "--stage3-epochs", "3"])
    demo.apply_fast(args, p)
    assert (args.epochs, args.stage3_samples) == (demo.FAST["epochs"], demo.FAST["stage3_samples"])
    assert args.stage3_epochs == 3  # a flag given explicitly wins
    assert demo.stage3_input({"train": "d/synth-train-{000000..000007}.tar"}, 2) == (
        "d/synth-train-{000000..000001}.tar"
    )


def test_rule_and_stage3_injection_flags(capsys):
    p = argparse.ArgumentParser()
    demo.add_arguments(p)
    rule = next(a for a in p._actions if a.dest == "rule")
    assert set(rule.choices) == set(RULES) - {"oracle"}  # oracle is the perfect-validation run's rule
    assert {"within-proposer", "lead-ensemble", "centred"} <= set(rule.choices)
    assert p.parse_args(["--rule", "centred"]).rule == "centred"
    inj = next(a for a in p._actions if a.dest == "stage3_injection")
    assert tuple(inj.choices) == INJECTIONS and inj.default == STAGE3_INJECTION == "multi-positive"
    with pytest.raises(SystemExit):  # the multi-positive loss runs in one process: refused before any work
        demo.main(["--processes", "2", "--precision", "fp32"])
    assert "trains in one process" in capsys.readouterr().err


def _fake_stages(monkeypatch, tmp_path: Path) -> dict[str, list[str]]:
    """The demo's pipeline with every stage replaced by one that writes its outputs at once; returns the
    training command of each stage-3 run as it launched."""
    from fgclep_plugin.demo import pipeline, stages

    launched: dict[str, list[str]] = {}

    def touch(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
        return path

    def stage1(a, urls):
        touch(demo.checkpoint_path(a.logs, a.name, a.epochs))
        (Path(a.logs) / a.name / "curve.json").write_text("[]")

    def stage2(a, urls, ckpt, kind):
        folder = Path(a.out) / f"stage2-{kind}"
        folder.mkdir(parents=True)
        summary = {"urls": str(folder / "train-000000.tar"), "kept_per_report": 1.0, "rule": kind}
        atomic_write_json(folder / "summary.json", {**summary, "ground_truth": []})
        return summary

    def train_run(a, urls, log=print):
        launched[a.name] = stages.launch_command(a, urls)
        return touch(demo.checkpoint_path(a.logs, a.name, a.epochs)).parents[1]

    def write_report(out, rows, summaries, curve, ckpts, meta):
        atomic_write_json(out / "results.json", {"table": [], "meta": meta})
        (out / "results.md").write_text("| measure |")

    corpus = {"train": str(tmp_path / "synth-train-{000000..000007}.tar"), "val": "val.tar"}
    monkeypatch.setattr(pipeline, "ensure_synth_corpus", lambda root, workers=1: corpus)
    for name, fn in (("stage1", stage1), ("stage2", stage2), ("train_run", train_run)):
        monkeypatch.setattr(pipeline, name, fn)
    monkeypatch.setattr(pipeline, "evaluate_all", lambda a, ckpts: [])
    monkeypatch.setattr(pipeline, "figures", lambda a, ckpts: None)
    monkeypatch.setattr(pipeline, "write_report", write_report)
    return launched


def test_stage3_runs_on_features_use_the_injection_and_rerun_when_it_changes(tmp_path, monkeypatch, capsys):
    launched = _fake_stages(monkeypatch, tmp_path)
    p = argparse.ArgumentParser()
    demo.add_arguments(p)

    def ran(*flags: str) -> list[str]:
        capsys.readouterr()
        args = p.parse_args(["--fast", "--out", str(tmp_path / "demo"), *flags])
        demo.apply_fast(args, p)
        demo.run_demo(args)
        log = capsys.readouterr().out
        return [line.split("]")[0][1:] for line in log.splitlines() if line.endswith("] running ...")]

    def injection(run: str) -> str:  # as the training entry point reads the command
        cmd = launched[run]
        return split_argv(cmd[cmd.index("fgclep_plugin.train") + 1 :])[0].ecg_feature_injection

    feature_runs = [f"stage3-{k}" for k in STAGE2_KINDS]
    assert len(ran()) == 1 + len(STAGE2_KINDS) + len(demo.RUNS) + 1  # stage 1, 2, 3 and the evaluation
    assert sorted(launched) == sorted([*feature_runs, "stage3-original"])
    assert {run: injection(run) for run in feature_runs} == dict.fromkeys(feature_runs, "multi-positive")
    assert (
        "--ecg-feature-injection" not in launched["stage3-original"]
    )  # no features: the entry point's default
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert results["meta"]["stage3_injection"] == "multi-positive"
    assert ran() == []  # resumed
    launched.clear()
    assert sorted(ran("--stage3-injection", "caption")) == sorted([*feature_runs, "eval"])  # not stage 1 or 2
    assert {run: injection(run) for run in launched} == dict.fromkeys(feature_runs, "caption")
    # flags after -- override the injection (and, as every extra flag, re-run every training run)
    launched.clear()
    assert "stage1" in ran("--stage3-injection", "caption", "--", "--ecg-feature-injection", "append")
    assert injection("stage3-validated") == injection("stage3-original") == "append"


def test_demo_table_takes_each_column_from_its_rows():
    rows = [
        {
            "checkpoint_label": "CLEP",
            "task": "synth-feature",
            "protocol": "zero-shot",
            "prompt_set": "ens",
            "value": 0.61,
            "interval": [0.55, 0.66],
        },
        {
            "checkpoint_label": "FG-CLEP",
            "task": "synth-feature",
            "protocol": "zero-shot",
            "prompt_set": "ens",
            "value": 0.72,
            "interval": [0.7, 0.74],
        },
        {
            "checkpoint_label": "CLEP",
            "task": "synth-diagnosis",
            "protocol": "linear probe",
            "fraction": 100.0,
            "value": 0.9,
        },
    ]
    summaries = {
        "validated": {
            "rule": "quantile q=0.9",
            "kept_per_report": 1.5,
            "ground_truth": [{"rule": "quantile q=0.9", "precision": 0.8, "recall": 0.4}],
        },
        "unvalidated": {
            "rule": "cosine>-2",
            "kept_per_report": 6.0,
            "ground_truth": [{"rule": "cosine>-2", "precision": 0.3, "recall": 1.0}],
        },
    }
    table = {line["measure"]: line for line in demo.demo_table(rows, summaries)}
    ens = table["synth-feature zero-shot macro AUC (ens)"]
    assert (
        ens["CLEP"]["value"] == 0.61 and ens["FG-CLEP"]["interval"] == [0.7, 0.74] and ens["original"] is None
    )
    assert table["synth-diagnosis linear probe macro AUC (100 % labels)"]["CLEP"] == {
        "value": 0.9,
        "interval": None,
    }
    prec = table["stage-2 features: precision (ground truth)"]
    assert (prec["FG-CLEP"]["value"], prec["unvalidated"]["value"]) == (0.8, 0.3)
    text = demo.format_table(demo.demo_table(rows, summaries))
    assert (
        "| synth-feature zero-shot macro AUC (ens) | 0.610 [0.550, 0.660] | 0.720 [0.700, 0.740] | - | - | - |"
        in text
    )


def test_fast_demo_end_to_end(tmp_path, capsys):
    """``fgclep demo --fast`` from nothing (corpus included): every stage runs and leaves what it promises."""
    out = tmp_path / "demo"
    argv = ["--fast", "--out", str(out), "--synth-data", str(tmp_path / "synth")]
    assert demo.main(argv) == 0
    log = capsys.readouterr().out
    stages = ("stage1", *(f"stage2-{k}" for k in STAGE2_KINDS), *(f"stage3-{k}" for k in demo.RUNS), "eval")
    for stage in stages:
        assert f"[{stage}] running ..." in log and f"[{stage}] finished in" in log, stage
    res = json.loads((out / "results.json").read_text())
    assert set(res["checkpoints"]) == set(demo.COLUMNS)
    for label, ck in res["checkpoints"].items():
        assert Path(ck).stat().st_size > 1e6, label
    # augmented shards: validated ones keep fewer features than the keep-all control, and some are kept
    kept = {k: v["kept_per_report"] for k, v in res["augment"].items()}
    assert 0 < kept["validated"] < kept["unvalidated"]
    # the ceiling keeps exactly the truly present candidates: precision 1 against the ground truth
    gt = res["augment"]["perfect-validation"]["ground_truth"]
    oracle = next(g for g in gt if g["rule"] == res["augment"]["perfect-validation"]["rule"])
    assert oracle["precision"] == 1.0 and oracle["recall"] == 1.0
    shard = min((out / "stage2-validated").glob("train-*.tar"))
    with tarfile.open(shard) as tf:
        names = tf.getnames()
        metas = {n: json.load(tf.extractfile(n)) for n in names if n.endswith(".json")}
        texts = {n: tf.extractfile(n).read().decode() for n in names if n.endswith(".txt")}
    n_kept = 0
    for name, meta in metas.items():
        kept_texts = [c["text"] for c in meta.get("stage2", {}).get("candidates", []) if c["kept"]]
        report = texts[name[: -len(".json")] + ".txt"]
        assert all(t in report for t in kept_texts), name  # every kept feature is in the training text
        n_kept += len(kept_texts)
    assert n_kept / len(metas) == pytest.approx(kept["validated"], abs=0.5)
    table = {line["measure"]: line for line in res["table"]}
    for measure, line in table.items():
        for col in demo.COLUMNS:
            cell = line.get(col)
            if isinstance(cell, dict) and cell.get("value") is not None and "AUC" in measure:
                assert 0.0 <= cell["value"] <= 1.0, (measure, col)
    for col in demo.COLUMNS:
        cell = table["synth-diagnosis zero-shot macro AUC (templates)"][col]
        low, high = cell["interval"]
        assert 0.3 < cell["value"] < 1.0 and low <= cell["value"] <= high, col
    assert table["ludb-rhythm zero-shot macro AUC (ens)"]["FG-CLEP"]["value"] > 0
    assert sorted(json.loads(p.read_text())["digest"] for p in (out / ".demo").glob("*.json"))
    # the runs on stage-2 shards trained with the multi-positive injection; the original-report control without
    for kind in demo.RUNS:
        params = (out / f"stage3-{kind}" / "params.txt").read_text().splitlines()
        want = "append" if kind == "original" else STAGE3_INJECTION
        assert f"ecg_feature_injection: {want}" in params, kind
    assert res["meta"]["stage3_injection"] == STAGE3_INJECTION
    assert list((out / "figures").rglob("*.png"))
    md = (out / "results.md").read_text()
    assert "| measure |" in md and "Stage-1 learning curve" in md
    # a re-run resumes every stage
    assert demo.main(argv) == 0
    assert "stages run now: none" in capsys.readouterr().out


def test_bench_table_names_every_benchmark_and_its_failures():
    from fgclep_plugin.bench import all as bench_all

    rows = [
        {
            "name": "synth",
            "what": "w",
            "seconds": 2.0,
            "rc": 0,
            "lines": ["  250.0 records/s"],
            "command": "c",
        },
        {"name": "train", "what": "t", "seconds": 1.0, "rc": 1, "lines": ["FAILED: boom"], "command": "d"},
    ]
    text = bench_all.format_table(rows, bench_all.describe_machine())
    assert "== synth: w  [2 s, ok]  $ c\n     250.0 records/s" in text
    assert "[1 s, exit 1]" in text and "FAILED: boom" in text
    assert "cores" in text and "torch" in text and "open_clip" in text
    assert {b[0] for b in bench_all.BENCHMARKS} == {
        "shards",
        "synth",
        "tower",
        "train",
        "validate",
        "evaluate",
        "classify",
    }
