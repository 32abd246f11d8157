"""MIMIC-IV-ECG source on a MIMIC-shaped tree built from real LUDB signals (MIMIC lead order: aVF before aVL)."""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np
import pytest
import wfdb
from sources_helpers import DATA

from fgclep_plugin.ecgdata.ecg import LEADS, canonicalize
from fgclep_plugin.ecgdata.records import RejectError
from fgclep_plugin.ecgdata.sources import make_source, patient_split
from fgclep_plugin.ecgdata.sources.mimic import UNINFORMATIVE, MimicSource

SCHEMA = DATA / "mimic_iv_ecg_schema"
MIMIC_ORDER = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]

# study_id -> (subject_id, LUDB record whose signal it carries or None for no waveform, report_0.. cells)
STUDIES = {
    "40689238": (
        "10000032",
        "1",
        ["Sinus rhythm", "Possible right atrial abnormality", "", "Borderline ECG"],
    ),
    "40689239": (
        "10000032",
        "2",
        ["Sinus bradycardia", "--- Suspect arm lead reversal", "Left axis deviation"],
    ),
    "41000001": ("10000033", "3", ["", "", ""]),
    "41000002": ("10000034", "4", ["--- Suspect arm lead reversal"]),
    "41000003": ("10000035", "5", ["*** unreliable interpretation ***", "Age not entered, assumed to be 50"]),
    "41000004": ("10000036", "6", ["Normal ECG"]),
    "41000005": ("10000037", None, ["Sinus rhythm", "Normal ECG"]),
    "41000006": ("10000038", "7", ["Sinus rhythm", "Left ventricular hypertrophy"]),
}
NAN_STUDY, NAN_SPAN = "41000006", (1000, 1020)  # a short NaN stretch, as real MIMIC records have


def _header(path: Path) -> tuple[list[str], dict[str, str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
        return list(rows[0].keys()), rows[0]


def ludb(record: str):
    return make_source("ludb", DATA / "ludb").load(record)


@pytest.fixture(scope="module")
def mimic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mimic")
    rl_cols, rl_row = _header(SCHEMA / "record_list.csv")
    mm_cols, mm_row = _header(SCHEMA / "machine_measurements.csv")
    assert [f"report_{i}" for i in range(18)] == [c for c in mm_cols if c.startswith("report_")]
    rl_rows, mm_rows = [], []
    for study, (subject, ludb_id, reports) in STUDIES.items():
        rel = f"files/p{subject[:4]}/p{subject}/s{study}/{study}"
        rl_rows.append({**rl_row, "subject_id": subject, "study_id": study, "file_name": study, "path": rel})
        cells = {f"report_{i}": "" for i in range(18)}
        cells.update({f"report_{i}": text for i, text in enumerate(reports)})
        mm_rows.append({**mm_row, "subject_id": subject, "study_id": study, **cells})
        if ludb_id is None:
            continue
        rec = ludb(ludb_id)
        by_name = dict(zip([n.lower() for n in rec.lead_names], rec.signal))
        sig = np.stack([by_name[n.lower()] for n in MIMIC_ORDER]).T.copy()
        if study == NAN_STUDY:
            sig[NAN_SPAN[0] : NAN_SPAN[1], 0] = np.nan
        out = root / rel
        out.parent.mkdir(parents=True)
        wfdb.wrsamp(
            study,
            fs=500,
            units=["mV"] * 12,
            sig_name=MIMIC_ORDER,
            p_signal=sig,
            fmt=["16"] * 12,
            adc_gain=[1000.0] * 12,
            baseline=[0] * 12,
            write_dir=str(out.parent),
        )
    for name, cols, rows in (
        ("record_list.csv", rl_cols, rl_rows[::-1]),
        ("machine_measurements.csv", mm_cols, mm_rows),
    ):
        with open(root / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
    return root


def _by_study(src: MimicSource) -> dict[str, tuple]:
    return {it[1]: it for it in src.items()}


def test_leads_restored_to_canonical_order(mimic_root):
    src = make_source("mimic", mimic_root)
    rec = src.load(_by_study(src)["40689238"])
    assert rec.lead_names == MIMIC_ORDER  # as found: aVF before aVL
    x, meta = canonicalize(rec)
    y, _ = canonicalize(ludb("1"))
    for i, lead in enumerate(LEADS):
        np.testing.assert_array_equal(x[i], y[i], err_msg=f"lead {lead}")
    avl, avf = LEADS.index("aVL"), LEADS.index("aVF")
    assert np.abs(x[avl].astype(float) - y[avf]).max() > 0.1  # the two leads really differ: a swap would show
    assert meta["lead_names_found"][4:6] == ["aVF", "aVL"]
    assert rec.patient_id == "10000032" and rec.meta["study_id"] == "40689238"


def test_report_assembled_from_report_columns(mimic_root):
    src = make_source("mimic", mimic_root)
    items = _by_study(src)
    assert (
        src.load(items["40689238"]).report
        == "Sinus rhythm. Possible right atrial abnormality. Borderline ECG."
    )
    rec = src.load(items["40689239"])
    assert rec.report == "Sinus bradycardia. Left axis deviation."
    assert rec.meta["report_dropped"] == ["Suspect arm lead reversal"]
    kept = make_source("mimic", mimic_root, drop_uninformative="false").load(items["40689239"])
    assert kept.report == "Sinus bradycardia. Suspect arm lead reversal. Left axis deviation."


@pytest.mark.parametrize(
    "study, reason",
    [
        ("41000001", "report-empty"),
        ("41000002", "report-uninformative"),
        ("41000003", "report-uninformative"),
        ("41000004", "report-too-short"),
        ("41000005", "missing-file"),
    ],
)
def test_filters_reject_with_reason_naming_the_file(mimic_root, study, reason):
    src = make_source("mimic", mimic_root)
    item = _by_study(src)[study]
    with pytest.raises(RejectError) as err:
        src.load(item)
    assert err.value.reason == reason
    assert item[2] in str(err.value)  # the record path


def test_filters_are_configurable(mimic_root, tmp_path):
    items = _by_study(make_source("mimic", mimic_root))
    assert make_source("mimic", mimic_root, min_words=1).load(items["41000004"]).report == "Normal ECG."
    patterns = tmp_path / "patterns.txt"
    patterns.write_text("# one regex per line\nborderline\n")
    src = make_source("mimic", mimic_root, uninformative=str(patterns))
    assert src.load(items["40689238"]).report == "Sinus rhythm. Possible right atrial abnormality."
    assert src.load(items["41000002"]).report == "Suspect arm lead reversal."  # default list replaced
    src = make_source("mimic", mimic_root, uninformative="unreliable||^age not entered")
    with pytest.raises(RejectError, match="report-uninformative"):
        src.load(items["41000003"])
    assert len(UNINFORMATIVE) >= 5


def test_nan_stretch_is_repaired(mimic_root):
    src = make_source("mimic", mimic_root)
    rec = src.load(_by_study(src)[NAN_STUDY])
    assert np.isnan(rec.signal[0]).sum() == NAN_SPAN[1] - NAN_SPAN[0]
    x, meta = canonicalize(rec)
    assert meta["nan_repaired"] == NAN_SPAN[1] - NAN_SPAN[0] and np.isfinite(x.astype(float)).all()


def test_patient_split_is_deterministic_and_by_patient():
    fr = (0.8, 0.1, 0.1)
    ids = [str(10_000_000 + i) for i in range(20_000)]
    splits = [patient_split(s, fr) for s in ids]
    assert splits == [patient_split(s, fr) for s in ids]  # deterministic
    counts = {k: splits.count(k) / len(ids) for k in ("train", "val", "test")}
    for k, f in zip(("train", "val", "test"), fr):
        assert abs(counts[k] - f) < 0.015, counts
    other_seed = [patient_split(s, fr, seed="other") for s in ids]
    assert 0.2 < np.mean([a != b for a, b in zip(splits, other_seed)]) < 0.5
    with pytest.raises(ValueError):
        patient_split("1", (0.5, 0.2, 0.2))


def test_source_split_keeps_studies_of_a_subject_together(mimic_root):
    all_items = make_source("mimic", mimic_root).items()
    parts = {}
    for seed in ("a", "b", "c", "d", "e"):
        for name in ("train", "val", "test"):
            parts[name] = make_source(
                "mimic", mimic_root, split=name, split_fractions="0.5,0.25,0.25", split_seed=seed
            ).items()
        assert sorted(it for its in parts.values() for it in its) == sorted(
            all_items
        )  # a partition: nothing lost or duplicated
        for name, items in parts.items():
            subjects = {it[0] for it in items}
            for subject in subjects:
                assert all(it[0] != subject for other, its in parts.items() if other != name for it in its)
            assert all(patient_split(it[0], (0.5, 0.25, 0.25), seed) == name for it in items)
    assert all_items == sorted(
        all_items, key=lambda t: t[2]
    )  # deterministic, by path, whatever the CSV order


def test_mimic_source_pickles(mimic_root):
    src = make_source("mimic", mimic_root, split="all")
    item = _by_study(src)["40689238"]
    first = src.load(item)
    clone = pickle.loads(pickle.dumps(src))
    assert not hasattr(clone, "_cache_measurements")
    np.testing.assert_array_equal(clone.load(item).signal, first.signal)


def test_measurement_table_is_parsed_once_per_process(mimic_root, monkeypatch):
    """Workers get a fresh (unpickled) source per shard: the big table must not be re-read for every shard."""
    from fgclep_plugin.ecgdata.sources import mimic

    mimic.read_measurements.cache_clear()
    reads = []
    real_reader = csv.DictReader

    def counting_reader(f, *args, **kwargs):
        reads.append(Path(getattr(f, "name", "")).name)
        return real_reader(f, *args, **kwargs)

    monkeypatch.setattr(csv, "DictReader", counting_reader)
    src = make_source("mimic", mimic_root)
    item = _by_study(src)["40689238"]
    reports = {pickle.loads(pickle.dumps(src)).load(item).report for _ in range(4)}
    assert reports == {src.load(item).report}
    assert reads.count("machine_measurements.csv") == 1


def test_mimic_tree_to_shards_with_workers(mimic_root, tmp_path):
    from fgclep_plugin.ecgdata.reader import iter_samples
    from fgclep_plugin.ecgdata.shards import write_shards

    src = make_source("mimic", mimic_root)
    summary = write_shards(
        src, str(tmp_path / "mimic-%06d.tar"), maxcount=4, workers=2, progress=False, log=None
    )
    assert summary["written"] == 3
    assert summary["rejected"] == {
        "missing-file": 1,
        "report-empty": 1,
        "report-too-short": 1,
        "report-uninformative": 2,
    }
    samples = {s["meta"]["record_id"]: s for s in iter_samples(summary["urls"])}
    assert sorted(samples) == ["40689238", "40689239", "41000006"]
    y, _ = canonicalize(ludb("2"))
    np.testing.assert_array_equal(samples["40689239"]["ecg"], y)
    assert samples["40689239"]["text"] == "Sinus bradycardia. Left axis deviation."
    assert samples["40689239"]["meta"]["patient_id"] == "10000032"
