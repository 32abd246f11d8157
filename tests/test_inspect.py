"""fgclep info / show on the shipped LUDB shards, checked against LUDB's own table."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest
from shard_helpers import DATA

from fgclep_plugin.cli import main
from fgclep_plugin.ecgdata.inspect import find_sample, summarize

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "shards/ludb/ludb-train-{000000..000002}.tar")
TEST = str(ROOT / "shards/ludb/ludb-test-000000.tar")


def test_summary_counts_match_ludb_table():
    s = summarize(TRAIN, label_key="Rhythms", top=50)
    assert s["samples"] == 150 and s["sources"] == {"ludb": 150}
    with open(DATA / "ludb" / "ludb.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if 1 <= int(r["ID"]) <= 150]
    expected = Counter(line.strip() for r in rows for line in r["Rhythms"].splitlines() if line.strip())
    assert dict(s["labels"]) == dict(expected)


def test_show_draws_the_requested_sample(tmp_path, capsys):
    out = tmp_path / "ecg.png"
    assert main(["show", TEST, "--key", "ludb_160", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("ludb_160: ") and find_sample(TEST, "ludb_160")["text"] in printed
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
    assert find_sample(TEST, index=3)["__key__"] == "ludb_154"
    with pytest.raises(ValueError, match="no sample with key 'nope'"):
        find_sample(TEST, "nope")


def _crafted_shard(path: Path, key: str) -> None:
    """A shard whose one sample has ``key`` (a tar member path, as a hostile shard could name it)."""
    import io
    import json
    import tarfile

    import numpy as np

    members = {
        "npy": _npy_bytes(np.zeros((12, 5000), dtype=np.float16)),
        "txt": b"sinus rhythm",
        "json": json.dumps({"source": "crafted"}).encode(),
    }
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for suffix, data in members.items():
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _npy_bytes(arr) -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


@pytest.mark.parametrize("key", ["../../x/owned", "/tmp/abs/owned", "C:\\evil\\owned"])
def test_show_default_output_name_stays_in_the_working_folder(tmp_path, monkeypatch, capsys, key):
    shard = tmp_path / "crafted.tar"
    _crafted_shard(shard, key)
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    before = {p for p in tmp_path.rglob("*")}
    assert main(["show", str(shard), "--dpi", "20"]) == 0
    (written,) = {p for p in tmp_path.rglob("*")} - before
    assert written.parent == work and written.suffix == ".png"
    assert "/" not in written.name and "\\" not in written.name and not written.name.startswith(".")
    assert f"drawn to {written.name}" in capsys.readouterr().out
