"""Evaluation tasks: which shards, which label key, which classes, which prompts.

MERL benchmark tasks (PTB-XL super / sub / form / rhythm, CPSC2018 = MERL's ``icbeb``, CSN = MERL's
``chapman``) are built from a user's raw PTB-XL, CPSC2018 and CSN folders by :func:`build_benchmark`: the
project's own readers and shard writer convert the records named in the MERL split tables, and each sample's
json gets the table row's positive classes under ``labels["merl_<task>"]`` (columns read **by name**: the
PTB-XL sub-class train table orders its columns differently from val/test). A table row whose record is not in
the raw folder is rejected (``missing-file``) like any other unconvertible record. The shard folder also gets
``tasks.json`` (classes, label key, prompts, shard patterns), so evaluation needs nothing else.

Embedded tasks: the synthetic corpus (``synth-diagnosis`` and ``synth-feature``, the waveform-feature analogue
of PTB-XL form; labels are the generator's ground truth) and LUDB (``ludb-rhythm`` / ``-axis`` /
``-conduction`` / ``-hypertrophy`` from the ``ludb.csv`` columns the LUDB shards carry; test = records 151-200,
train = 1-100, val = 101-150).

A task's data folder may be a local path or a URL the shard opener reads (``http(s)://``, ``s3://``, ``gs://``,
``hf://``, ``file:``; :mod:`fgclep_plugin.ecgdata.opener`): shard names are joined to a URL with ``/``, and
``tasks.json`` and the synthetic corpus's ``sizes.json`` files are read through the opener. A synthetic corpus is
generated on first use only in a local folder; a remote one must already hold every split.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..ecgdata.labels import labels_from_meta
from ..ecgdata.opener import local_path, read_optional
from ..ecgdata.records import EcgRecord, RejectError
from ..ecgdata.shards import atomic_write_json, write_shards
from ..ecgdata.sources import make_source
from ..synth.corpus import ensure_synth_corpus, existing_corpus_urls
from ..synth.vocabulary import DIAGNOSES, FEATURES

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Task:
    """A labelled evaluation task: shards per split, the sample-json label key and the classes.

    ``prompts`` maps a class to the words put into templates and ENS prompts; ``ckepe`` (MERL tasks only)
    maps it to MERL's CKEPE description. A sample without ``labels[label_key]`` is not part of the task.
    """

    name: str
    label_key: str
    class_names: tuple[str, ...]
    splits: Mapping[str, str]
    prompts: Mapping[str, str] = field(default_factory=dict)
    ckepe: Mapping[str, str] | None = None
    description: str = ""
    value_to_class: Callable[[str], str] | None = None

    def prompt_text(self, name: str) -> str:
        """Words standing for class ``name`` in prompts (the mapped text, else underscores read as spaces)."""
        return self.prompts.get(name) or name.replace("_", " ")

    def urls(self, split: str) -> str:
        """Shard URLs of ``split``; ``ValueError`` naming the task if it has none."""
        if split not in self.splits:
            raise ValueError(f"task {self.name} has no {split} split (it has {', '.join(self.splits)})")
        return self.splits[split]

    def labels(self, meta: dict[str, Any]) -> list[str] | None:
        """Classes of one sample (``None``: the sample is not labelled for this task)."""
        if self.label_key not in (meta.get("labels") or {}):
            return None
        names = labels_from_meta(meta, self.label_key)
        return [self.value_to_class(v) for v in names] if self.value_to_class else names


# --------------------------------------------------------------------------------------------- MERL tables


@dataclass(frozen=True)
class MerlSpec:
    """Where a MERL task lives: the dataset it is built from, its split tables and its class-name key."""

    dataset: str  # "ptbxl" | "cpsc2018" | "csn": the folder the shards go to and the reader used
    table: str  # path under merl_splits/ with {split}
    class_key: str  # key in dataset_class_names.json


MERL_TASKS: dict[str, MerlSpec] = {
    "ptbxl-super": MerlSpec("ptbxl", "ptbxl/super_class/ptbxl_super_class_{split}.csv", "ptbxl_super_class"),
    "ptbxl-sub": MerlSpec("ptbxl", "ptbxl/sub_class/ptbxl_sub_class_{split}.csv", "ptbxl_sub_class"),
    "ptbxl-form": MerlSpec("ptbxl", "ptbxl/form/ptbxl_form_{split}.csv", "ptbxl_form"),
    "ptbxl-rhythm": MerlSpec("ptbxl", "ptbxl/rhythm/ptbxl_rhythm_{split}.csv", "ptbxl_rhythm"),
    "cpsc2018": MerlSpec("cpsc2018", "icbeb/icbeb_{split}.csv", "icbeb"),
    "csn": MerlSpec("csn", "chapman/chapman_{split}.csv", "chapman"),
}
MERL_DATASETS = ("ptbxl", "cpsc2018", "csn")

# Readable class words for templates and ENS where the first CKEPE synonym is not one (MERL's CKEPE text for
# BIGU starts "Based on the input"; for HYP it says "left ventricular hypertrophy").
CLASS_WORDS = {"DIG": "digitalis effect", "BIGU": "bigeminal pattern", "HYP": "hypertrophy"}


def merl_label_key(task: str) -> str:
    """The sample-json label key of MERL task ``task``."""
    return "merl_" + MERL_TASKS[task].class_key


def merl_record_id(dataset: str, row: Mapping[str, str]) -> str:
    """The record a MERL table row names: PTB-XL ``ecg_id``, CPSC2018 ``filename`` (A0001), CSN file stem."""
    if dataset == "ptbxl":
        return str(int(float(row["ecg_id"])))
    if dataset == "cpsc2018":
        return row["filename"].strip()
    return Path(row["ecg_path"].strip()).stem


def read_merl_table(benchmarks: str | Path, task: str, split: str) -> dict[str, list[str]]:
    """``{record id: positive classes}`` of one MERL split table, columns matched by name against
    ``dataset_class_names.json``; ``ValueError`` naming the file on a missing column or a non-0/1 cell."""
    spec = MERL_TASKS[task]
    root = Path(benchmarks)
    classes = load_class_names(root)[spec.class_key]
    path = root / "merl_splits" / spec.table.format(split=split)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in classes if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: no column(s) {', '.join(missing)} for task {task}")
        table: dict[str, list[str]] = {}
        for line, row in enumerate(reader, start=2):
            bad = [c for c in classes if row[c].strip() not in ("0", "1")]
            if bad:
                raise ValueError(f"{path} line {line}: class column(s) {bad} are not 0/1")
            table[merl_record_id(spec.dataset, row)] = [c for c in classes if row[c].strip() == "1"]
    return table


def load_class_names(benchmarks: str | Path) -> dict[str, list[str]]:
    """``dataset_class_names.json``: the classes of every MERL task, in MERL's order."""
    return json.loads((Path(benchmarks) / "dataset_class_names.json").read_text())


def load_ckepe(benchmarks: str | Path) -> dict[str, str]:
    """``CKEPE_prompt.json``: class code -> MERL's descriptive prompt."""
    return json.loads((Path(benchmarks) / "CKEPE_prompt.json").read_text())


def class_words(code: str, ckepe: Mapping[str, str]) -> str:
    """Readable words for a MERL class code: :data:`CLASS_WORDS`, else the first synonym of its CKEPE text."""
    if code in CLASS_WORDS:
        return CLASS_WORDS[code]
    return ckepe.get(code, code).split(",")[0].strip().rstrip(".") or code


class TaskSource:
    """A dataset reader restricted to the records of MERL tables, each record labelled with its table rows.

    Items are ``(record id, reader item or None)``, in table order; a row whose record the raw folder lacks
    is rejected as ``missing-file`` naming the table. ``rows`` maps record id -> {label key: classes}.
    """

    def __init__(self, base: Any, rows: dict[str, dict[str, list[str]]], split: str, tables: Sequence[str]):
        self.base, self.rows, self.split, self.tables = base, rows, split, list(tables)
        self.name = base.name
        self.root = base.root
        self.require_report = False  # evaluation reads labels, not reports

    def items(self) -> list[tuple[str, Any]]:
        if getattr(self.base, "name", "") == "ptbxl":
            known = set(self.base.items())
            lookup = {rid: rid for rid in self.rows if rid in known}
        else:
            lookup = {Path(item).name: item for item in self.base.items()}
        return [(rid, lookup.get(rid)) for rid in self.rows]

    def load(self, item: tuple[str, Any]) -> EcgRecord:
        rid, base_item = item
        if base_item is None:
            raise RejectError(
                "missing-file", f"record {rid} of {', '.join(self.tables)} not found under {self.root}"
            )
        rec = self.base.load(base_item)
        rec.labels.update(self.rows[rid])
        rec.meta["merl_split"] = self.split
        return rec


def benchmark_rows(benchmarks: str | Path, dataset: str, split: str) -> tuple[dict, list[str]]:
    """Every MERL task of ``dataset`` for ``split``: ``({record id: {label key: classes}}, table names)``.

    The PTB-XL tasks share records (split by ``strat_fold``), so one shard set per split carries all four
    label keys; a record is labelled for a task only if that task's table lists it.
    """
    rows: dict[str, dict[str, list[str]]] = {}
    tables = []
    for task, spec in MERL_TASKS.items():
        if spec.dataset != dataset:
            continue
        tables.append(Path(spec.table.format(split=split)).name)
        for rid, positives in read_merl_table(benchmarks, task, split).items():
            rows.setdefault(rid, {})[merl_label_key(task)] = positives
    return rows, tables


def build_benchmark(
    dataset: str,
    root: str | Path,
    benchmarks: str | Path,
    out: str | Path,
    *,
    splits: Sequence[str] = SPLITS,
    source_options: Mapping[str, Any] | None = None,
    maxcount: int = 1000,
    workers: int = 1,
    min_seconds: float = 5.0,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert the raw ``dataset`` folder ``root`` into labelled MERL task shards under ``out/dataset/``.

    ``dataset``: ``ptbxl`` (all four PTB-XL tasks), ``cpsc2018`` or ``csn``. Per split, shards
    ``out/dataset/dataset-SPLIT-%06d.tar`` (resumable, rejects listed beside them), then ``tasks.json``.
    ``min_seconds`` defaults to 5 s: CPSC2018 holds records from 6 s on (MERL itself keeps only the first 5 s,
    zero-padded); shorter records are padded to 10 s and their original length kept in the metadata.
    Returns ``{split: write_shards summary, "not_in_tables": raw records no table lists (not part of any task)}``.
    """
    if dataset not in MERL_DATASETS:
        raise ValueError(f"unknown benchmark dataset {dataset!r}; choose one of {', '.join(MERL_DATASETS)}")
    options = dict(source_options or {})
    if dataset == "ptbxl":
        options.setdefault("rate", 500)  # MERL reads filename_hr
    base = make_source(dataset, root, **options)
    folder = Path(out) / dataset
    summaries: dict[str, Any] = {}
    urls: dict[str, str] = {}
    listed: set[str] = set()
    for split in splits:
        rows, tables = benchmark_rows(benchmarks, dataset, split)
        source = TaskSource(base, rows, split, tables)
        summary = write_shards(
            source,
            str(folder / f"{dataset}-{split}-%06d.tar"),
            maxcount,
            workers,
            items=source.items(),
            canon_opts={"min_seconds": min_seconds},
            progress=progress,
        )
        listed.update(rows)
        summaries[split] = summary
        urls[split] = Path(summary["urls"]).name
    unlisted = [str(i) for i in base.items() if (i if dataset == "ptbxl" else Path(i).name) not in listed]
    if unlisted:
        print(
            f"{dataset}: {len(unlisted)} record(s) under {root} are in no MERL table: {', '.join(unlisted[:5])}"
        )
    summaries["not_in_tables"] = unlisted
    ckepe = load_ckepe(benchmarks)
    classes = load_class_names(benchmarks)
    spec_out = {}
    for task, spec in MERL_TASKS.items():
        if spec.dataset != dataset:
            continue
        names = classes[spec.class_key]
        spec_out[task] = {
            "label_key": merl_label_key(task),
            "class_names": names,
            "prompts": {c: class_words(c, ckepe) for c in names},
            "ckepe": {c: ckepe[c] for c in names},
            "splits": urls,
            "description": f"MERL benchmark {spec.class_key} ({dataset} records of the MERL split tables)",
        }
    atomic_write_json(folder / "tasks.json", spec_out)
    return summaries


# ------------------------------------------------------------------------------------------ embedded tasks


def is_url(folder: str | Path) -> bool:
    """True if ``folder`` is a URL (``scheme://...``) rather than a local path."""
    return "://" in str(folder)


def folder_url(folder: str | Path, *names: str) -> str:
    """``folder/names...``: pathlib for a local folder (as it always was), ``/`` for a URL (pathlib would turn
    ``http://host`` into ``http:/host``)."""
    if is_url(folder):
        return "/".join([str(folder).rstrip("/"), *names])
    return str(Path(folder, *names))


LUDB_TASKS = {
    "ludb-rhythm": "Rhythms",
    "ludb-axis": "Electric axis of the heart",
    "ludb-conduction": "Conduction abnormalities",
    "ludb-hypertrophy": "Hypertrophies",
}
# The values of those ludb.csv columns over all 200 records, most frequent first (axis values without the
# column-name prefix).
LUDB_CLASSES = {
    "ludb-rhythm": (
        "Sinus rhythm",
        "Sinus bradycardia",
        "Atrial fibrillation",
        "Sinus arrhythmia",
        "Sinus tachycardia",
        "Atrial flutter, typical",
        "Wandering atrial pacemaker",
        "Irregular sinus rhythm",
        "Aberrant conduction",
    ),
    "ludb-axis": ("normal", "left axis deviation", "vertical", "horizontal", "right axis deviation"),
    "ludb-conduction": (
        "Incomplete right bundle branch block",
        "Left anterior hemiblock",
        "I degree av block",
        "Incomplete left bundle branch block",
        "Iii degree av-block",
        "Complete right bundle branch block",
        "Complete left bundle branch block",
        "Non-specific intravintricular conduction delay",
        "Sinoatrial blockade, undefined",
    ),
    "ludb-hypertrophy": (
        "Left ventricular hypertrophy",
        "Left atrial hypertrophy",
        "Right atrial overload",
        "Left ventricular overload",
        "Left atrial overload",
        "Right ventricular hypertrophy",
        "Right atrial hypertrophy",
    ),
}
# Prompt words where the ludb.csv spelling is not one (lower-cased otherwise).
LUDB_WORDS = {
    "I degree av block": "first degree AV block",
    "Iii degree av-block": "third degree AV block",
    "Non-specific intravintricular conduction delay": "non-specific intraventricular conduction delay",
    "Atrial flutter, typical": "typical atrial flutter",
}
AXIS_PREFIX = "Electric axis of the heart:"


def ludb_axis_class(value: str) -> str:
    """``"Electric axis of the heart: left axis deviation"`` -> ``"left axis deviation"``."""
    return value.split(":", 1)[1].strip() if value.startswith(AXIS_PREFIX) else value.strip()


def _ludb_axis_words(name: str) -> str:
    return name if "axis" in name else f"{name} electrical axis"


def ludb_task(name: str, folder: str | Path = "shards/ludb") -> Task:
    """LUDB task ``name`` over the shipped LUDB shards in ``folder`` (a local folder or a URL)."""
    classes = LUDB_CLASSES[name]
    axis = name == "ludb-axis"
    return Task(
        name=name,
        label_key=LUDB_TASKS[name],
        class_names=classes,
        splits={
            "train": folder_url(folder, "ludb-train-{000000..000001}.tar"),
            "val": folder_url(folder, "ludb-train-000002.tar"),
            "test": folder_url(folder, "ludb-test-000000.tar"),
        },
        prompts={c: _ludb_axis_words(c) if axis else LUDB_WORDS.get(c, c.lower()) for c in classes},
        description=f"LUDB ludb.csv column {LUDB_TASKS[name]!r}; test = records 151-200",
        value_to_class=ludb_axis_class if axis else None,
    )


def remote_corpus_urls(folder: str) -> dict[str, str]:
    """:func:`fgclep_plugin.synth.corpus.existing_corpus_urls` of a corpus at URL ``folder`` (each split's
    ``sizes.json`` read through the opener); ``FileNotFoundError`` naming the first split missing or empty
    (a corpus is generated only in a local folder)."""
    urls = {}
    for split in SPLITS:
        sizes_url = folder_url(folder, split, "sizes.json")
        data = read_optional(sizes_url)
        n = len(json.loads(data)) if data is not None else 0
        if n == 0:
            raise FileNotFoundError(
                f"synthetic corpus: {sizes_url} is missing or empty; a corpus is generated only in a local "
                "folder: generate it there (fgclep eval ... --synth-data LOCAL_FOLDER) and serve that folder"
            )
        urls[split] = folder_url(folder, split, f"synth-{split}-{{000000..{n - 1:06d}}}.tar")
    return urls


def synth_task(name: str, folder: str | Path = "data/synth") -> Task:
    """``synth-diagnosis`` / ``synth-feature`` over the synthetic corpus in ``folder``: a corpus already there
    is read as it is (any size or mention rate: never regenerated with the defaults); generated if missing and
    ``folder`` is local (a URL must hold the whole corpus: :func:`remote_corpus_urls`)."""
    local = local_path(str(folder))  # a path as it is; a file: URL's folder; None for a remote URL
    urls = (
        remote_corpus_urls(str(folder))
        if local is None
        else existing_corpus_urls(local) or ensure_synth_corpus(local)
    )
    if name == "synth-diagnosis":
        key, prompts = "diagnoses", {k: v["phrases"][0] for k, v in DIAGNOSES.items()}
        what = "the generator's diagnoses (ground truth)"
    else:
        key, prompts = "features", {k: v["phrase"] for k, v in FEATURES.items()}
        what = "the generator's waveform features (ground truth; the analogue of PTB-XL form)"
    return Task(name, key, tuple(prompts), dict(urls), prompts, None, f"synthetic corpus: {what}")


EMBEDDED_TASKS = ("synth-diagnosis", "synth-feature", *LUDB_TASKS)
ALL_TASKS = (*MERL_TASKS, *EMBEDDED_TASKS)


def merl_task(name: str, folder: str | Path = "shards/merl") -> Task:
    """MERL task ``name`` from the ``tasks.json`` that :func:`build_benchmark` wrote under ``folder`` (a local
    folder or a URL: the file is read through the opener, the shard names joined to ``folder``)."""
    dataset = MERL_TASKS[name].dataset
    path = folder_url(folder, dataset, "tasks.json")
    data = read_optional(path)
    if data is None:
        raise FileNotFoundError(
            f"task {name}: {path} not found; build it first: fgclep eval build {dataset} --root RAW_{dataset.upper()}"
            f" --benchmarks MERL_TABLES --out {folder}"
        )
    spec = json.loads(data)[name]
    return Task(
        name=name,
        label_key=spec["label_key"],
        class_names=tuple(spec["class_names"]),
        splits={s: folder_url(folder, dataset, u) for s, u in spec["splits"].items()},
        prompts=spec["prompts"],
        ckepe=spec["ckepe"],
        description=spec["description"],
    )


def get_task(name: str, data: str | Path | None = None) -> Task:
    """Task ``name`` (one of :data:`ALL_TASKS`); ``data`` overrides its shard folder (MERL: the ``--out``
    of ``fgclep eval build``; synthetic: the corpus folder; LUDB: the LUDB shard folder)."""
    if name in MERL_TASKS:
        return merl_task(name, data or "shards/merl")
    if name in LUDB_TASKS:
        return ludb_task(name, data or "shards/ludb")
    if name in ("synth-diagnosis", "synth-feature"):
        return synth_task(name, data or "data/synth")
    raise ValueError(f"unknown task {name!r}; choose one of {', '.join(ALL_TASKS)}")
