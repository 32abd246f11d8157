"""Sources on the real files in ../shared/data: every record converts or is rejected with a reason naming it."""

from __future__ import annotations

import collections
import csv
import pickle
import shutil

import numpy as np
import pytest
import scipy.io
import wfdb
from sources_helpers import DATA, REAL_FOLDERS

from fgclep_plugin.ecgdata.ecg import LEADS, canonicalize
from fgclep_plugin.ecgdata.labels import labels_from_meta
from fgclep_plugin.ecgdata.records import RejectError
from fgclep_plugin.ecgdata.sources import SOURCES, make_source, source_options_help
from fgclep_plugin.ecgdata.sources.challenge import ChallengeSource
from fgclep_plugin.ecgdata.sources.ptbxl import parse_scp_codes
from fgclep_plugin.ecgdata.sources.snomed import PACKAGED_TABLE, build_table, load_names

FOLDERS = REAL_FOLDERS


def convert_all(name: str, folder: str, options: dict) -> tuple[collections.Counter, list]:
    """load + canonicalize every item; returns (outcome counts, [(item, RejectError)])."""
    src = make_source(name, DATA / folder, **options)
    counts, rejects = collections.Counter(), []
    for item in src.items():
        try:
            x, _ = canonicalize(src.load(item))
            assert x.shape == (12, 5000) and x.dtype == np.float16 and np.isfinite(x.astype(float)).all()
            counts["converted"] += 1
        except RejectError as err:
            counts[err.reason] += 1
            rejects.append((item, err))
    return counts, rejects


def _names_item(item, err: RejectError) -> bool:
    stem = item[2] if isinstance(item, tuple) else str(item)
    return stem.rsplit("/", 1)[-1] in str(err)


@pytest.fixture(scope="module")
def outcomes() -> dict[str, tuple[collections.Counter, list]]:
    return {folder: convert_all(name, folder, opts) for name, folder, opts in FOLDERS}


@pytest.mark.parametrize("name, folder, options", FOLDERS, ids=[f[1] for f in FOLDERS])
def test_every_record_converts_or_is_rejected_naming_the_file(outcomes, name, folder, options):
    counts, rejects = outcomes[folder]
    n_items = len(make_source(name, DATA / folder, **options).items())
    assert sum(counts.values()) == n_items  # nothing disappears
    assert counts["converted"] > 0
    for item, err in rejects:
        assert _names_item(item, err), (item, str(err))


def test_outcomes_per_folder(outcomes):
    """What the shared data holds: all LUDB/CinC/CPSC/Chapman/PTB-DB records convert; PTB-XL has one waveform."""
    got = {folder: counts for folder, (counts, _) in outcomes.items()}
    print({folder: dict(c) for folder, c in got.items()})
    for folder, n in (("ludb", 200), ("cinc2021", 52), ("cpsc2018", 10), ("chapman", 4), ("ptbdb", 3)):
        assert got[folder] == {"converted": n}, (folder, got[folder])
    assert got["ptbxl"]["converted"] == 1 and set(got["ptbxl"]) == {"converted", "missing-file"}
    # CODE-15: 7.3 s records are below the canonical 8 s minimum; the two artificial cases are not 400 Hz.
    assert got["code15"]["unexpected-fs"] == 2 and set(got["code15"]) <= {
        "converted",
        "too-short",
        "unexpected-fs",
    }


def test_code15_artificial_cases_are_rejected_with_clear_reasons():
    root = DATA / "code15"
    src = make_source("code15", root)
    for item, fs in (
        ("_artificial_test_cases/9190_low_sample_rate", "300"),
        ("_artificial_test_cases/9190_all_data_is_zero", "800"),
    ):
        with pytest.raises(RejectError, match=f"sampling rate {fs} Hz, expected 400 Hz") as err:
            src.load(item)
        assert err.value.reason == "unexpected-fs" and f"{item}.hea" in str(err.value)
    plain = make_source("challenge", root, require_report="false")  # without the CODE-15 rate rule
    with pytest.raises(RejectError, match="9190.dat") as err:  # its header names a signal file that is absent
        plain.load("_artificial_test_cases/9190_low_sample_rate")
    assert err.value.reason == "unreadable"
    rec = plain.load("_artificial_test_cases/9190_all_data_is_zero")
    with pytest.raises(RejectError) as err:
        canonicalize(rec, min_seconds=2)
    assert err.value.reason == "flat-signal" and "9190_all_data_is_zero" in str(err.value)


def test_code15_metadata_and_rate():
    src = make_source("code15", DATA / "code15")
    rec = src.load("training_data/11111")
    assert rec.fs == 400 and rec.report == "" and rec.patient_id == "911235"
    assert rec.labels["chagas"] is False and rec.meta["exam_id"] == "11111"
    _x, meta = canonicalize(rec, min_seconds=2)
    assert meta["padded_s"] > 0 and meta["fs_original"] == 400
    with pytest.raises(RejectError, match="report-empty"):
        make_source("challenge", DATA / "code15").load("training_data/11111")  # no Dx: no report


def test_georgia_header_quirk_is_read_without_touching_the_file():
    hea = DATA / "cinc2021" / "E00666.hea"
    before = hea.read_bytes()
    with pytest.raises(ValueError):
        wfdb.rdrecord(str(DATA / "cinc2021" / "E00666"))  # the quirk is real
    rec = make_source("georgia", DATA / "cinc2021").load("E00666")
    assert hea.read_bytes() == before
    assert "E00666.mat" in rec.meta["header_fix"]
    stored = scipy.io.loadmat(str(DATA / "cinc2021" / "E00666.mat"))[
        "val"
    ]  # digital, gain 1000/mV, baseline 0
    np.testing.assert_allclose(rec.signal * 1000.0, stored, atol=1e-9)


def test_challenge_reports_from_snomed_names():
    with open(DATA / "label_maps" / "challenge2021_dx_mapping_scored.csv", newline="") as f:
        scored = {r["SNOMEDCTCode"]: r["Dx"] for r in csv.DictReader(f)}
    header = (DATA / "chapman" / "WFDBRecords/01/010/JS00001.hea").read_text()
    codes = next(
        line.split(":", 1)[1].strip().split(",") for line in header.splitlines() if line.startswith("#Dx")
    )
    rec = make_source("chapman", DATA / "chapman").load("WFDBRecords/01/010/JS00001")
    expected = " ".join(scored[c][0].upper() + scored[c][1:] + "." for c in codes)
    assert rec.report == expected and rec.labels["snomed"] == codes
    assert rec.report.startswith("Atrial fibrillation.")  # 164889003; CSN's acronym for it is AFIB, not AF
    names = load_names()
    assert names["164889003"] == "atrial fibrillation" and names["164890007"] == "atrial flutter"


def test_unknown_codes_are_kept_and_a_report_without_names_is_rejected(tmp_path):
    for ext in (".hea", ".mat"):
        shutil.copy(DATA / "cpsc2018" / f"A0001{ext}", tmp_path / f"A0001{ext}")
    text = (tmp_path / "A0001.hea").read_text().replace("# Dx: 59118001", "# Dx: 59118001,999999999")
    (tmp_path / "A0001.hea").write_text(text)
    rec = ChallengeSource(tmp_path, dataset="cpsc2018").load("A0001")
    assert rec.labels["snomed_unmapped"] == ["999999999"] and rec.report == "Right bundle branch block."
    (tmp_path / "A0001.hea").write_text(text.replace("59118001,999999999", "999999999"))
    with pytest.raises(RejectError, match="A0001.hea") as err:
        ChallengeSource(tmp_path).load("A0001")
    assert err.value.reason == "report-empty"


def test_packaged_snomed_table_is_the_generated_one():
    with open(PACKAGED_TABLE, newline="", encoding="utf-8") as f:
        packaged = list(csv.DictReader(f))
    assert packaged == build_table(DATA / "label_maps")
    assert (PACKAGED_TABLE.parent / "README.md").read_text().count("BSD 2-Clause") == 1


def test_chapman_records_found_recursively():
    items = make_source("chapman", DATA / "chapman").items()
    assert items == [f"WFDBRecords/01/010/JS0000{i}" for i in (1, 2, 4, 5)]


def test_ptbxl_rows_reports_and_missing_waveforms():
    src = make_source("ptbxl", DATA / "ptbxl", rate=100)
    assert src.database.name == "ptbxl_database_v1.0.1_from_xlsx.csv"  # fallback from ptbxl_database.csv
    with open(src.database, newline="") as f:
        rows = list(csv.DictReader(f))
    assert src.items() == [r["ecg_id"] for r in rows]
    rec = src.load("1")
    assert rec.report == rows[0]["report"] and rec.patient_id == "15709" and rec.labels["strat_fold"] == 3
    # every listed code is present (rhythm and form codes carry likelihood 0.0): a plain list, likelihoods in meta
    assert rec.labels["scp_codes"] == ["NORM", "LVOLT", "SR"]
    assert rec.meta["scp_likelihoods"] == {"NORM": 100.0, "LVOLT": 0.0, "SR": 0.0}
    assert labels_from_meta({"labels": rec.labels}, "scp_codes") == ["NORM", "LVOLT", "SR"]
    assert rec.labels["diagnostic_superclass"] == ["NORM"] and rec.fs == 100
    np.testing.assert_allclose(rec.signal, wfdb.rdrecord(str(DATA / "ptbxl/records100/00001_lr")).p_signal.T)
    with pytest.raises(RejectError, match=r"records100/00000/00002_lr\.hea not found") as err:
        src.load("2")
    assert err.value.reason == "missing-file"
    hr = make_source("ptbxl", DATA / "ptbxl", rate=500, database="ptbxl_database_v1.0.1_from_xlsx.csv")
    with pytest.raises(RejectError, match=r"records500/00000/00001_hr\.hea not found"):
        hr.load("1")


def test_scp_codes_are_literals_never_code():
    assert parse_scp_codes("{'NORM': 100.0, 'SR': 0.0}") == {"NORM": 100.0, "SR": 0.0}
    for bad in (
        "__import__('os').system('echo owned')",
        "['NORM']",
        "{'a': 1",
        "{'NORM': 'x'}",
        "{'A': [1]}",
    ):
        with pytest.raises(RejectError) as err:
            parse_scp_codes(bad, "row 7")
        assert err.value.reason == "bad-labels" and "row 7" in str(err.value)


def test_ludb_report_and_labels():
    rec = make_source("ludb", DATA / "ludb").load("1")
    assert rec.report.startswith(
        "Rhythm: Sinus bradycardia. Electric axis of the heart: left axis deviation."
    )
    assert "Left ventricular hypertrophy." in rec.report
    assert rec.labels["Rhythms"] == ["Sinus bradycardia"]
    assert sorted(rec.labels["Hypertrophies"]) == [
        "Left ventricular hypertrophy",
        "Left ventricular overload",
    ]
    assert rec.lead_names[:6] == ["i", "ii", "iii", "avr", "avl", "avf"] and rec.fs == 500
    assert make_source("ludb", DATA / "ludb" / "data").items() == make_source("ludb", DATA / "ludb").items()


def test_ptbdb_fifteen_channels_at_1000_hz():
    src = make_source("ptbdb", DATA / "ptbdb")
    rec = src.load("s0010_re")
    assert len(rec.lead_names) == 15 and rec.fs == 1000 and rec.lead_names[-3:] == ["vx", "vy", "vz"]
    assert rec.report.startswith("Reason for admission: Myocardial infarction.")
    x, meta = canonicalize(rec)
    stored = wfdb.rdrecord(str(DATA / "ptbdb" / "s0010_re"), sampto=1000).p_signal.T  # first second, 1000 Hz
    np.testing.assert_allclose(x[LEADS.index("V6"), 250], stored[11, 500], atol=0.05)  # lead matched by name
    assert meta["seconds_original"] == 38.4


def _generic_tree(tmp_path):
    for ext in (".hea", ".dat", ".xyz"):
        (tmp_path / "p1").mkdir(exist_ok=True)
        shutil.copy(DATA / "ptbdb" / f"s0010_re{ext}", tmp_path / "p1" / f"s0010_re{ext}")
    with open(tmp_path / "reports.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["record", "report", "patient_id", "mi"])
        w.writerow(["p1/s0010_re", "Acute inferolateral myocardial infarction", "patient001", "1"])
        w.writerow(["p2/gone", "Normal ECG", "patient002", "0"])
        w.writerow(["p1/s0010_re_empty", "", "patient001", "0"])
    return tmp_path


def test_generic_csv_source(tmp_path):
    root = _generic_tree(tmp_path)
    src = make_source("generic", root, dataset="ptbdb-csv")
    assert src.items() == ["p1/s0010_re", "p1/s0010_re_empty", "p2/gone"]
    rec = src.load("p1/s0010_re")
    assert rec.source == "ptbdb-csv" and rec.patient_id == "patient001" and rec.labels == {"mi": "1"}
    assert rec.report == "Acute inferolateral myocardial infarction" and canonicalize(rec)[0].shape == (
        12,
        5000,
    )
    for item, reason in (("p2/gone", "missing-file"), ("p1/s0010_re_empty", "missing-file")):
        with pytest.raises(RejectError, match=item.split("/")[-1]) as err:
            src.load(item)
        assert err.value.reason == reason
    with pytest.raises(ValueError, match="column 'text'"):
        make_source("generic", root, report_column="text")


def test_registry_options_and_pickling():
    assert {"mimic", "ptbxl", "challenge", "cpsc2018", "csn", "chapman", "georgia", "ludb", "generic"} <= set(
        SOURCES
    )
    with pytest.raises(ValueError, match="unknown source"):
        make_source("nope", DATA)
    with pytest.raises(ValueError, match="no option"):
        make_source("ludb", DATA / "ludb", colour="red")
    assert "correct_gain" in source_options_help("ludb") and "split_fractions" in source_options_help("mimic")
    assert "ludb:" in source_options_help()
    raw = make_source("ludb", DATA / "ludb", correct_gain="false", adc_gain="1000")  # strings, as from a CLI
    assert raw.correct_gain is False
    for name, folder, opts in FOLDERS:
        src = make_source(name, DATA / folder, **opts)
        items = src.items()
        assert items == src.items()
        item = "1" if name == "ptbxl" else items[-1]
        try:
            first = src.load(item)
        except RejectError:
            continue
        clone = pickle.loads(pickle.dumps(src))
        again = clone.load(item)
        np.testing.assert_array_equal(again.signal, first.signal)
        assert (again.report, again.lead_names, again.key) == (first.report, first.lead_names, first.key)
