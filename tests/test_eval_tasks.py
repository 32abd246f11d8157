"""Evaluation tasks: MERL tables read by column name, benchmark shards built from the real raw files with the
table's labels row for row, LUDB and synthetic tasks."""

from __future__ import annotations

import csv
import json

import pytest
from eval_helpers import BENCHMARKS, SHARED

from fgclep_plugin.ecgdata.reader import iter_samples
from fgclep_plugin.evaluate.tasks import (
    LUDB_CLASSES,
    LUDB_TASKS,
    MERL_TASKS,
    build_benchmark,
    get_task,
    ludb_axis_class,
    read_merl_table,
)


def table_positives(path, classes, id_of):
    """Independent reading of a MERL table: {record id: set of classes whose column is 1}."""
    with open(path, newline="") as f:
        return {id_of(r): {c for c in classes if r[c] == "1"} for r in csv.DictReader(f)}


def test_sub_class_tables_are_read_by_column_name():
    classes = json.loads((BENCHMARKS / "dataset_class_names.json").read_text())["ptbxl_sub_class"]
    heads = {}
    for split in ("train", "test"):
        path = BENCHMARKS / "merl_splits" / "ptbxl" / "sub_class" / f"ptbxl_sub_class_{split}.csv"
        with open(path) as f:
            heads[split] = next(csv.reader(f))
        table = read_merl_table(BENCHMARKS, "ptbxl-sub", split)
        expect = table_positives(path, classes, lambda r: str(int(r["ecg_id"])))
        assert {k: set(v) for k, v in table.items()} == expect
    assert heads["train"] != heads["test"]  # the column order differs: position would mislabel AVB/ISC/RAO
    assert sorted(heads["train"]) == sorted(heads["test"])


def test_bad_table_cell_names_file_and_line(tmp_path):
    for name in ("dataset_class_names.json", "CKEPE_prompt.json"):
        (tmp_path / name).write_text((BENCHMARKS / name).read_text())
    d = tmp_path / "merl_splits" / "icbeb"
    d.mkdir(parents=True)
    src = (BENCHMARKS / "merl_splits" / "icbeb" / "icbeb_test.csv").read_text().splitlines()
    src[2] = src[2][:-1] + "7"
    (d / "icbeb_test.csv").write_text("\n".join(src[:4]) + "\n")
    with pytest.raises(ValueError, match=r"icbeb_test.csv line 3: class column\(s\) \['STD'\] are not 0/1"):
        read_merl_table(tmp_path, "cpsc2018", "test")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("merl")
    raw = {
        "ptbxl": (SHARED / "ptbxl", {"rate": 100}),
        "cpsc2018": (SHARED / "cpsc2018", {}),
        "csn": (SHARED / "chapman", {}),
    }
    summaries = {
        d: build_benchmark(d, root, BENCHMARKS, out, source_options=opt, maxcount=50000, progress=False)
        for d, (root, opt) in raw.items()
    }
    return out, summaries


def test_benchmark_shards_from_the_real_files_match_the_tables_row_for_row(built):
    out, summaries = built
    ids = {
        "ptbxl": lambda r: str(int(r["ecg_id"])),
        "cpsc2018": lambda r: r["filename"],
        "csn": lambda r: r["ecg_path"].rsplit("/", 1)[1].removesuffix(".mat"),
    }
    classes = json.loads((BENCHMARKS / "dataset_class_names.json").read_text())
    seen = {}
    for name, spec in MERL_TASKS.items():
        task = get_task(name, out)
        for split in ("train", "val", "test"):
            table = BENCHMARKS / "merl_splits" / spec.table.format(split=split)
            expect = table_positives(table, classes[spec.class_key], ids[spec.dataset])
            for s in iter_samples(task.urls(split)):
                rid = s["meta"]["record_id"].rsplit("/", 1)[-1]
                assert set(task.labels(s["meta"])) == expect[rid], (name, rid)
                assert s["meta"]["merl_split"] == split
                seen.setdefault(name, set()).add(rid)
    # the shared folder: PTB-XL 00001 (all four tasks), CPSC2018 A0001-A0010, Chapman JS00001/2/5 (JS00004: no row)
    assert all(seen[t] == {"1"} for t in ("ptbxl-super", "ptbxl-sub", "ptbxl-form", "ptbxl-rhythm"))
    assert seen["cpsc2018"] == {f"A{i:04d}" for i in range(1, 11)}
    assert seen["csn"] == {"JS00001", "JS00002", "JS00005"}
    assert summaries["csn"]["not_in_tables"] == ["WFDBRecords/01/010/JS00004"]
    # every other table row is a listed reject naming the record, not a silent omission
    n_rows = len((BENCHMARKS / "merl_splits" / "chapman" / "chapman_train.csv").read_text().splitlines()) - 1
    assert (
        summaries["csn"]["train"]["written"] + summaries["csn"]["train"]["rejected"]["missing-file"] == n_rows
    )
    first = json.loads((out / "csn" / "csn-test.rejects.jsonl").read_text().splitlines()[0])
    assert first["reason"] == "missing-file" and "chapman_test.csv" in first["message"]
    task = get_task("cpsc2018", out)
    assert task.ckepe["AFIB"] == json.loads((BENCHMARKS / "CKEPE_prompt.json").read_text())["AFIB"]
    assert task.prompt_text("AFIB") == "Atrial Fibrillation" and task.prompt_text("BIGU") == "BIGU"


def test_unbuilt_merl_task_says_how_to_build(tmp_path):
    with pytest.raises(FileNotFoundError, match="fgclep eval build ptbxl"):
        get_task("ptbxl-form", tmp_path)


def test_ludb_tasks_cover_ludb_csv_and_the_test_shard():
    with open(SHARED / "ludb" / "ludb.csv", newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    for name, column in LUDB_TASKS.items():
        values = {v.strip() for r in rows for v in r[column].splitlines() if v.strip()}
        if name == "ludb-axis":
            values = {ludb_axis_class(v) for v in values}
        assert values == set(LUDB_CLASSES[name]), name
        task = get_task(name)
        samples = list(iter_samples(task.urls("test")))
        assert [s["meta"]["record_id"] for s in samples] == [str(i) for i in range(151, 201)]
        by_id = {r["ID"]: r for r in rows}
        for s in samples:
            expect = [v.strip() for v in by_id[s["meta"]["record_id"]][column].splitlines() if v.strip()]
            if name == "ludb-axis":
                expect = [ludb_axis_class(v) for v in expect]
            assert task.labels(s["meta"]) == expect


def test_synth_tasks_read_the_generators_ground_truth():
    for name, truth in (("synth-diagnosis", "diagnoses"), ("synth-feature", "features")):
        task = get_task(name)
        for s, _ in zip(iter_samples(task.urls("test")), range(20)):
            gt = s["meta"]["synth"][truth]
            assert task.labels(s["meta"]) == [g["name"] if isinstance(g, dict) else g for g in gt]
            assert set(task.labels(s["meta"])) <= set(task.class_names)


@pytest.mark.parametrize("sub", ["build", "tasks", "zeroshot", "linear", "all"])
def test_eval_help_renders(sub, capsys):
    from fgclep_plugin.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["eval", sub, "--help"])
    assert exit_info.value.code == 0
    assert "%%" not in capsys.readouterr().out


def test_synth_task_reads_an_existing_corpus_as_it_is(tmp_path):
    """A small corpus at mention rate 0.6 is scored as written: not regenerated with the default sizes and
    rate (it was, silently, before: every non-default corpus evaluated was the default one)."""
    from fgclep_plugin.ecgdata.reader import iter_samples
    from fgclep_plugin.evaluate.tasks import get_task
    from fgclep_plugin.synth.corpus import generate_corpus

    generate_corpus(tmp_path, {"train": 6, "val": 4, "test": 5}, p_mention=0.6, maxcount=4)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.tar")}
    task = get_task("synth-feature", tmp_path)
    assert task.splits["train"].endswith("synth-train-{000000..000001}.tar")
    samples = list(iter_samples(task.splits["test"]))
    assert len(samples) == 5
    assert {s["meta"]["synth"]["p_mention"] for s in samples} == {0.6}
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.tar")} == before


@pytest.fixture
def memory_folder():
    """A folder of fsspec's in-memory filesystem (a remote store without a server): ``(fs, URL)``."""
    import uuid

    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/eval-tasks-{uuid.uuid4().hex}"
    yield fs, f"memory://{root}"
    if fs.exists(root):
        fs.rm(root, recursive=True)


def test_tasks_over_urls_read_through_the_opener(memory_folder, tmp_path, monkeypatch):
    """A data folder given as a URL: shard names joined with ``/`` (pathlib made ``http://`` ``http:/``),
    ``tasks.json`` and the corpus's ``sizes.json`` read through the opener, nothing written locally."""
    from fgclep_plugin.synth.corpus import generate_corpus

    fs, base = memory_folder
    monkeypatch.chdir(tmp_path)  # a URL taken for a local folder would appear here
    ludb = get_task("ludb-rhythm", "http://example.org/shards/ludb/")
    assert ludb.urls("test") == "http://example.org/shards/ludb/ludb-test-000000.tar"
    assert ludb.urls("train") == "http://example.org/shards/ludb/ludb-train-{000000..000001}.tar"

    local = tmp_path / "corpus"
    generate_corpus(local, {"train": 6, "val": 4, "test": 5}, maxcount=4)
    fs.put(str(local), base.removeprefix("memory://"), recursive=True)
    task = get_task("synth-diagnosis", f"{base}/")
    assert task.urls("test") == f"{base}/test/synth-test-{{000000..000001}}.tar"
    assert {s: u.replace(base, str(local)) for s, u in task.splits.items()} == get_task(
        "synth-diagnosis", local
    ).splits
    assert [s["__key__"] for s in iter_samples(task.urls("test"))] == [
        s["__key__"] for s in iter_samples(get_task("synth-diagnosis", local).urls("test"))
    ]
    with pytest.raises(FileNotFoundError, match="generated only in a local folder"):
        get_task("synth-feature", f"{base}/nothing-here")

    with pytest.raises(FileNotFoundError, match=rf"{base}/ptbxl/tasks.json not found.*fgclep eval build"):
        get_task("ptbxl-form", base)
    spec = {"label_key": "merl_ptbxl_form", "class_names": ["NDT"], "prompts": {}, "ckepe": {"NDT": "x"},
            "splits": {"test": "ptbxl-test-{000000..000001}.tar"}, "description": "d"}  # fmt: skip
    fs.pipe(f"{base.removeprefix('memory://')}/ptbxl/tasks.json", json.dumps({"ptbxl-form": spec}).encode())
    assert get_task("ptbxl-form", base).urls("test") == f"{base}/ptbxl/ptbxl-test-{{000000..000001}}.tar"
    assert list(tmp_path.iterdir()) == [local]


def test_eval_tasks_lists_a_remote_corpus_by_reading_it(memory_folder, tmp_path, monkeypatch, capsys):
    """``fgclep eval tasks`` with ``--synth-data URL``: a present remote corpus is read (its classes listed),
    an absent one is "not built" with the URL named, never "generated on first use" (only a local folder is)."""
    from fgclep_plugin.cli import main
    from fgclep_plugin.synth.corpus import generate_corpus

    fs, base = memory_folder
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "tasks", "--synth-data", f"{base}/none"]) == 0
    out = capsys.readouterr().out
    assert "not generated yet" not in out and "synth-feature: not built" in out and f"{base}/none" in out
    local = tmp_path / "corpus"
    generate_corpus(local, {"train": 6, "val": 4, "test": 5}, maxcount=4)
    fs.put(str(local), base.removeprefix("memory://"), recursive=True)
    assert main(["eval", "tasks", "--synth-data", base]) == 0
    listed = capsys.readouterr().out
    n = len(get_task("synth-feature", local).class_names)
    assert f"synth-feature: {n} classes" in listed
