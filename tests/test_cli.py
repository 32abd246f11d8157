"""The fgclep command: shards subcommand end to end, readable errors, and the shipped example shards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from shard_helpers import DATA

from fgclep_plugin.cli import main
from fgclep_plugin.ecgdata.reader import iter_samples

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_ludb_shards_are_reproducible_by_the_converter(tmp_path):
    out = tmp_path / "ludb-test-%06d.tar"
    rc = main(
        [
            "shards",
            "ludb",
            "--root",
            str(DATA / "ludb"),
            "--out",
            str(out),
            "--range",
            "150:200",
            "--maxcount",
            "50",
            "--quiet",
        ]
    )
    assert rc == 0
    assert (tmp_path / "ludb-test-000000.tar").read_bytes() == (
        ROOT / "shards/ludb/ludb-test-000000.tar"
    ).read_bytes()
    shipped = json.loads((ROOT / "shards/ludb/sizes.json").read_text())
    assert shipped == {
        "ludb-train-000000.tar": 50,
        "ludb-train-000001.tar": 50,
        "ludb-train-000002.tar": 50,
        "ludb-test-000000.tar": 50,
    }
    ids = [
        s["meta"]["record_id"]
        for s in iter_samples(str(ROOT / "shards/ludb/ludb-train-{000000..000002}.tar"))
    ]
    assert ids == [str(i) for i in range(1, 151)]


def test_cpsc_conversion_with_summary(tmp_path, capsys):
    summary = tmp_path / "summary.json"
    rc = main(
        [
            "shards",
            "cpsc2018",
            "--root",
            str(DATA / "cpsc2018"),
            "--out",
            str(tmp_path / "c-%06d.tar"),
            "--summary-json",
            str(summary),
            "--quiet",
        ]
    )
    assert rc == 0
    s = json.loads(summary.read_text())
    n_hea = len(list((DATA / "cpsc2018").glob("*.hea")))
    n_rej = len(Path(s["rejects_file"]).read_text().splitlines())
    assert s["written"] + n_rej == n_hea == 10
    assert "cpsc2018: wrote" in capsys.readouterr().out
    texts = [x["text"] for x in iter_samples(s["urls"])]
    assert len(texts) == s["written"] and all(texts)


def _fgclep(*args: str) -> subprocess.CompletedProcess:
    """Run the command line in a fresh process, as a user would."""
    cmd = [sys.executable, "-m", "fgclep_plugin.cli", *args]
    return subprocess.run(cmd, check=False, capture_output=True, text=True)


def test_readable_errors(tmp_path):
    r = _fgclep("shards", "ludb", "--root", str(tmp_path / "missing"), "--out", str(tmp_path / "x.tar"))
    assert r.returncode == 1
    assert "fgclep shards: error: ludb: root" in r.stderr and "does not exist" in r.stderr
    assert "Traceback" not in r.stderr
    assert main(["shards", "ludb", "--root", str(DATA / "ludb"), "--out", str(tmp_path / "x.tar")]) == 1
    r = _fgclep(
        "shards",
        "ludb",
        "--root",
        str(DATA / "ludb"),
        "--out",
        str(tmp_path / "x-%06d.tar"),
        "--option",
        "colour=blue",
    )
    assert r.returncode == 1 and "has no option(s) colour" in r.stderr
    out = str(tmp_path / "y-%06d.tar")
    assert main(["shards", "ludb", "--root", str(DATA / "ludb"), "--out", out, "--limit", "-1"]) == 1
    assert not (tmp_path / "sizes.json").exists()  # not the first N-1 records, silently


def test_wheel_carries_model_configs_and_label_table(tmp_path):
    import zipfile

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("fgclep_plugin-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {p.name for p in (ROOT / "model_configs").glob("*.json")}
    assert configs and {f"fgclep_plugin/model_configs/{c}" for c in configs} <= names
    assert "fgclep_plugin/ecgdata/sources/snomed_names.csv" in names
    assert any(n.endswith("entry_points.txt") for n in names)


def test_code15_records_without_text_are_kept_as_the_reader_documents(tmp_path):
    """``code15`` (require_report=false) keeps records without a report: they must reach the shards, with an
    empty txt and their Chagas label, not be rejected as empty reports by the writer."""
    import wfdb

    root = DATA / "code15"
    expected = {"converted": 0, "too-short": 0, "unexpected-fs": 0, "amplitude": 0}
    for hea in root.rglob("*.hea"):
        h = wfdb.rdheader(str(hea.with_suffix("")))
        if h.fs != 400:
            expected["unexpected-fs"] += 1
        elif h.sig_len / h.fs < 7:
            expected["too-short"] += 1
        elif np.nanmax(np.abs(wfdb.rdrecord(str(hea.with_suffix(""))).p_signal)) > 30:  # artefact spikes
            expected["amplitude"] += 1
        else:
            expected["converted"] += 1
    summary = tmp_path / "s.json"
    out = str(tmp_path / "c-%06d.tar")
    args = ["shards", "code15", "--root", str(root), "--out", out, "--min-seconds", "7", "--quiet"]
    assert main([*args, "--maxcount", "500", "--summary-json", str(summary)]) == 0
    s = json.loads(summary.read_text())
    assert s["written"] == expected["converted"] > 100
    assert s["rejected"] == {k: v for k, v in expected.items() if k != "converted" and v}
    samples = list(iter_samples(s["urls"]))
    assert len(samples) == s["written"] and all(x["text"] == "" for x in samples)
    assert all(isinstance(x["meta"]["labels"]["chagas"], bool) for x in samples)


def test_option_examples_in_the_help_are_real_options():
    """Every KEY=VALUE example in ``fgclep shards --help`` is an option of the source it names."""
    import inspect
    import re

    from fgclep_plugin.cli import build_parser
    from fgclep_plugin.ecgdata.sources import SOURCES

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    text = next(a.help for a in sub.choices["shards"]._actions if a.dest == "option")
    examples = re.findall(r"(\w+)=(\w+) \((\w+)\)", text)
    assert len(examples) >= 2
    for key, _value, source in examples:
        assert key in inspect.signature(SOURCES[source].__init__).parameters, (key, source)


def test_bench_shards_runs_on_a_source_with_rejected_records(capsys):
    """The first 12 CODE-15 items include the two artificial bad records and 7.3 s ones: the benchmark times
    the records that convert (the others cost their read) instead of crashing on the first reject."""
    root = DATA / "code15"
    args = ["bench-shards", "--source", "code15", "--root", str(root), "--repeats", "1", "--scale", "2"]
    assert main([*args, "--limit", "12"]) == 0
    out = capsys.readouterr().out
    from fgclep_plugin.ecgdata.ecg import canonicalize
    from fgclep_plugin.ecgdata.records import RejectError
    from fgclep_plugin.ecgdata.sources import make_source

    src = make_source("code15", root)
    n = 0
    for item in src.items()[:12]:
        try:
            canonicalize(src.load(item))
            n += 1
        except RejectError:
            pass
    assert 0 < n < 12 and f"records: {n} converted of 12" in out and "speed-up (b)/(a)" in out
    assert main([*args, "--limit", "2"]) == 1  # nothing converts: a clear error, not a division by zero
    assert "no record of code15" in capsys.readouterr().err


def test_a_root_without_records_is_an_error_not_an_empty_shard(tmp_path, capsys):
    out = str(tmp_path / "csn-%06d.tar")
    assert main(["shards", "csn", "--root", str(DATA / "label_maps"), "--out", out, "--quiet"]) == 1
    assert "csn: no records to convert under" in capsys.readouterr().err and not list(tmp_path.iterdir())
    assert main(["shards", "ludb", "--root", str(DATA / "ludb"), "--out", out, "--range", "300:400"]) == 1


def test_shards_fail_when_a_reader_bug_rejects_records(tmp_path, monkeypatch, capsys):
    """A reader bug (an unexpected exception) turns records into `error` rejects: the command must not pass."""
    from fgclep_plugin.ecgdata.sources.ludb import LudbSource

    good_load = LudbSource.load

    def buggy_load(self, item):
        if item in self.broken:
            raise AttributeError("'NoneType' object has no attribute 'p_signal'")
        return good_load(self, item)

    monkeypatch.setattr(LudbSource, "load", buggy_load)
    args = ["shards", "ludb", "--root", str(DATA / "ludb"), "--limit", "3", "--quiet"]

    LudbSource.broken = {"1", "2", "3"}  # every record: nothing written
    rc = main([*args, "--out", str(tmp_path / "all" / "l-%06d.tar")])
    err = capsys.readouterr().err
    rejects = tmp_path / "all" / "l.rejects.jsonl"
    assert rc == 1 and str(rejects) in err and "no record was written" in err and "3 records" in err
    rows = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["item"], r["reason"]) for r in rows] == [("1", "error"), ("2", "error"), ("3", "error")]
    assert "AttributeError" in rows[0]["message"]

    LudbSource.broken = {"2"}  # one record: the others are written, the run still fails
    rc = main([*args, "--out", str(tmp_path / "one" / "l-%06d.tar")])
    err = capsys.readouterr().err
    assert rc == 1 and "1 record failed with an unexpected error" in err
    assert str(tmp_path / "one" / "l.rejects.jsonl") in err
    assert len(list(iter_samples(str(tmp_path / "one" / "l-000000.tar")))) == 2

    LudbSource.broken = set()  # no bug: success
    assert main([*args, "--out", str(tmp_path / "ok" / "l-%06d.tar")]) == 0


def _options_without_help(parser, path):
    """(command, option) of every argument in ``parser`` and its subcommands that has no help text."""
    import argparse

    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                yield from _options_without_help(sub, [*path, name])
        elif a.help is None or (a.help != argparse.SUPPRESS and not a.help.strip()):
            yield " ".join(path), "/".join(a.option_strings) or a.dest


def test_every_option_of_every_subcommand_has_help():
    from fgclep_plugin.cli import build_parser

    parser = build_parser()
    assert not list(_options_without_help(parser, ["fgclep"]))
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"shards", "eval", "demo", "info", "show", "retrieve", "figures", "augment", "synth"} <= set(
        sub.choices
    )


def test_version_prints_the_package_version():
    from importlib.metadata import version

    r = _fgclep("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"fgclep {version('fgclep-plugin')}"


def test_a_runtime_error_exits_1_with_one_line_naming_the_file(tmp_path):
    missing = tmp_path / "nope-000000.tar"
    r = _fgclep("info", "--data", str(missing))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and str(missing) in r.stderr
    assert r.stderr.startswith("fgclep info: error:") and "Traceback" not in r.stderr


def test_a_shard_file_where_a_folder_belongs_is_one_line_exit_1(capsys):
    shard = str(Path(__file__).resolve().parents[1] / "shards" / "ludb" / "ludb-test-000000.tar")
    argv = ["eval", "zeroshot", "--model", "FGCLEP-Tiny", "--checkpoint", "none", "--task", "ludb-rhythm"]
    assert main([*argv, "--ludb-data", shard, "--no-cache", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fgclep eval: error:") and err.count("\n") == 1 and "Not a directory" in err, err


def test_one_cli_convention(capsys):
    """--data everywhere (info/show keep the positional form), --checkpoint required where a model scores
    ('none' = random weights), usage errors exit 2."""
    from fgclep_plugin.cli import build_parser

    test_shard = str(ROOT / "shards/ludb/ludb-test-000000.tar")
    parser = build_parser()
    assert parser.parse_args(["info", "--data", test_shard]).data == test_shard
    assert parser.parse_args(["info", test_shard]).data == test_shard
    for argv in (["info"], ["info", test_shard, "--data", test_shard]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    for command in (
        ["retrieve"],
        ["figures", "--label-key", "x", "--out", "o"],
        ["augment", "--out", "o-%06d.tar", "--cache", "c"],
    ):
        with pytest.raises(SystemExit) as e:
            parser.parse_args([*command, "--data", test_shard])
        assert e.value.code == 2 and "--checkpoint" in capsys.readouterr().err
        assert parser.parse_args([*command, "--data", test_shard, "--checkpoint", "none"]).checkpoint is None
    fig = parser.parse_args(["figures", "--data", "d", "--checkpoint", "c", "--label-key", "k", "--out", "o"])
    assert fig.batch_size == 24
    assert (
        parser.parse_args(
            ["figures", "--data", "d", "--checkpoint", "c", "--label-key", "k", "--out", "o", "--batch", "8"]
        ).batch_size
        == 8
    )


def test_light_command_modules_build_their_parsers_without_torch_scipy_or_wfdb():
    """Start-up time: these subcommands' parsers (demo, eval, study and augment among them) come from modules that import
    torch / open_clip, scipy and wfdb only when a command runs (seconds to load), so their --help and the fgclep
    parser need none of them."""
    code = """
import argparse, importlib, sys
from fgclep_plugin import cli
sub = argparse.ArgumentParser().add_subparsers()
cli._add_shards(sub)
cli._add_sources(sub)
for name in (
    "synth.cli", "ecgdata.inspect", "bench.shards", "bench.all", "evaluate.commands", "deploy.classify",
    "demo.cli", "evaluate.cli", "study.cli", "deploy.export", "augment.generate", "augment.rewrite",
):
    importlib.import_module("fgclep_plugin." + name).add_cli(sub)
print(sorted(m for m in ("torch", "open_clip", "scipy", "wfdb", "sklearn", "matplotlib") if m in sys.modules))
"""
    r = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert r.stdout.strip() == "[]"


def test_light_copies_of_flag_choices_equal_their_originals():
    """The parsers offer these choices without importing the torch-loading modules that define them; a rule or
    injection added there must be added to the copy too, or the flag would refuse it."""
    from fgclep_plugin import defaults
    from fgclep_plugin.augment.rules import RULES
    from fgclep_plugin.demo.config import DEMO_RULES
    from fgclep_plugin.training.injection import INJECTIONS

    assert defaults.INJECTIONS == INJECTIONS
    assert defaults.AUGMENT_RULES == RULES
    assert DEMO_RULES == tuple(r for r in RULES if r != "oracle")
