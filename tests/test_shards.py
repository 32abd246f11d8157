"""Shard writer and reader: content round trip, rejects, sizes.json, kill-and-resume, URL forms."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from shard_helpers import LudbWfdb

from fgclep_plugin.ecgdata.ecg import canonicalize
from fgclep_plugin.ecgdata.reader import expand_urls, iter_samples, read_sizes
from fgclep_plugin.ecgdata.shards import out_pattern_to_brace, write_shards

IDS = [str(i) for i in range(1, 13)] + ["no-such-record"]


def test_round_trip_content_rejects_and_sizes(tmp_path):
    src = LudbWfdb(IDS)
    s = write_shards(src, str(tmp_path / "ludb-%06d.tar"), maxcount=5, workers=2, progress=False, log=None)
    assert s["written"] == 12 and s["rejected"] == {"missing-file": 1} and s["shards"] == 3
    assert s["urls"] == str(tmp_path / "ludb-{000000..000002}.tar")
    sizes = json.loads((tmp_path / "sizes.json").read_text())
    assert sizes == {"ludb-000000.tar": 5, "ludb-000001.tar": 5, "ludb-000002.tar": 2}
    rejects = [json.loads(line) for line in (tmp_path / "ludb.rejects.jsonl").read_text().splitlines()]
    assert (
        rejects == [{"item": "no-such-record", "reason": "missing-file", "message": rejects[0]["message"]}]
        and "no-such-record.hea does not exist" in rejects[0]["message"]
    )
    samples = list(iter_samples(s["urls"]))
    assert [x["meta"]["record_id"] for x in samples] == IDS[:12]  # order kept
    assert all(x["ecg"].flags.writeable for x in samples)  # torch.from_numpy warns on read-only arrays
    for x, rid in zip(samples, IDS[:12]):
        expected, _ = canonicalize(src.load(rid))
        np.testing.assert_array_equal(x["ecg"], expected)
        assert x["text"] == " ".join(src.load(rid).report.split())
        assert x["meta"]["source"] == "ludb" and x["meta"]["fs_original"] == 500.0
    assert read_sizes(s["urls"]) == 12


def test_shards_are_byte_identical_across_runs_and_worker_counts(tmp_path):
    a = write_shards(LudbWfdb(IDS[:6]), str(tmp_path / "a" / "x-%06d.tar"), 3, 1, progress=False, log=None)
    b = write_shards(LudbWfdb(IDS[:6]), str(tmp_path / "b" / "x-%06d.tar"), 3, 2, progress=False, log=None)
    for ua, ub in zip(expand_urls(a["urls"]), expand_urls(b["urls"])):
        assert Path(ua).read_bytes() == Path(ub).read_bytes()


def test_second_shard_set_in_same_folder_merges_sizes_and_changed_input_is_refused(tmp_path):
    write_shards(LudbWfdb(IDS[:3]), str(tmp_path / "train-%06d.tar"), 10, 1, progress=False, log=None)
    write_shards(LudbWfdb(IDS[3:5]), str(tmp_path / "test-%06d.tar"), 10, 1, progress=False, log=None)
    assert json.loads((tmp_path / "sizes.json").read_text()) == {"train-000000.tar": 3, "test-000000.tar": 2}
    with pytest.raises(RuntimeError, match="written from different input or settings"):
        write_shards(LudbWfdb(IDS[:4]), str(tmp_path / "train-%06d.tar"), 10, 1, progress=False, log=None)


_KILLABLE = """
import sys
sys.path.insert(0, {tests!r})
from shard_helpers import LudbWfdb
from fgclep_plugin.ecgdata.shards import write_shards
ids = [str(i) for i in range(1, 41)]
write_shards(LudbWfdb(ids, delay={delay}), {out!r}, maxcount=4, workers={workers}, progress=False)
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_killed_conversion_resumes_to_exactly_the_full_set(tmp_path, workers):
    out = str(tmp_path / "ludb-%06d.tar")
    script = _KILLABLE.format(tests=str(Path(__file__).parent), delay=0.03, out=out, workers=workers)
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.time() + 60
    while len(list(tmp_path.glob("ludb-*.tar"))) < 3 and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: workers die too
    proc.wait()
    finished = sorted(tmp_path.glob("ludb-*.tar"))
    assert 3 <= len(finished) < 10, "the kill should land mid-run"
    for path in finished:  # no partial shard under a final name
        with tarfile.open(path) as tar:
            assert len(tar.getnames()) == 3 * 4
    assert not (tmp_path / "sizes.json").exists()

    s = write_shards(
        LudbWfdb([str(i) for i in range(1, 41)]), out, maxcount=4, workers=workers, progress=False, log=None
    )
    keys = [x["__key__"] for x in iter_samples(s["urls"])]
    assert s["written"] == 40 and len(keys) == 40 and len(set(keys)) == 40
    assert sorted(keys) == sorted(f"ludb_{i}" for i in range(1, 41))
    assert not list(tmp_path.glob(".*tmp-*"))


def test_url_forms(tmp_path):
    s = write_shards(LudbWfdb(IDS[:4]), str(tmp_path / "u-%06d.tar"), 2, 1, progress=False, log=None)
    files = expand_urls(s["urls"])
    assert files == [str(tmp_path / "u-000000.tar"), str(tmp_path / "u-000001.tar")]
    joined = f"{files[1]}::{files[0]}"
    assert [x["meta"]["record_id"] for x in iter_samples(joined)] == ["3", "4", "1", "2"]
    piped = f"pipe:cat {files[0]}"
    assert [x["meta"]["record_id"] for x in iter_samples(piped)] == ["1", "2"]
    assert out_pattern_to_brace("a-%06d.tar", 1) == "a-000000.tar"


def test_decode_refuses_pickled_and_misshapen_arrays(tmp_path):
    import io

    from fgclep_plugin.ecgdata.reader import decode_sample

    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        decode_sample({"__key__": "k", "npy": buf.getvalue(), "txt": b"x"})
    buf = io.BytesIO()
    np.save(buf, np.zeros((12, 100), np.float16))
    with pytest.raises(ValueError, match=r"k: ECG array has shape \(12, 100\)"):
        decode_sample({"__key__": "k", "npy": buf.getvalue(), "txt": b"x"})


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_walker_agrees_with_tarfile(tmp_path, fmt):
    import io

    from fgclep_plugin.ecgdata.reader import iter_tar

    path = tmp_path / "t.tar"
    long = (
        "d" * 110 + "/x.npy" if fmt == tarfile.USTAR_FORMAT else "dir/" + "x" * 120 + ".npy"
    )  # prefix field
    names = ["a.txt", long, "b/c.json", "empty.txt"]
    with tarfile.open(path, "w", format=fmt) as tar:
        for i, name in enumerate(names):
            data = bytes(range(256)) * i * 3 + name.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("subdir")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    with tarfile.open(path) as tar:
        expected = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]
    with open(path, "rb") as f:
        assert list(iter_tar(f, str(path))) == expected
    bad = bytearray(path.read_bytes())
    bad[10] ^= 0xFF
    with pytest.raises(ValueError, match="corrupt tar header"):
        list(iter_tar(io.BytesIO(bytes(bad)), "t.tar"))


def test_canonicalisation_rejects_name_the_file(tmp_path):
    from fgclep_plugin.ecgdata.sources import make_source

    src = make_source("ludb", LudbWfdb.LUDB_ROOT)
    s = write_shards(
        src,
        str(tmp_path / "l-%06d.tar"),
        10,
        items=["1", "2"],
        canon_opts={"min_seconds": 11},
        progress=False,
        log=None,
    )
    assert s["written"] == 0 and s["rejected"] == {"too-short": 2}
    rejects = [json.loads(line) for line in Path(s["rejects_file"]).read_text().splitlines()]
    for r, rid in zip(rejects, ["1", "2"]):
        assert r["item"] == rid and f"({rid}.hea)" in r["message"] and "10.00 s < minimum 11" in r["message"]


def test_second_writer_of_the_same_set_waits_for_the_first(tmp_path):
    """A concurrent run of the same conversion (two terminals, two test sessions generating one corpus) waits
    for the lock instead of deleting the first run's temporary shards; it then finds every shard complete."""
    import fcntl
    import threading

    out = str(tmp_path / "w-%06d.tar")
    (tmp_path / ".fgclep-state").mkdir()
    messages: list[str] = []
    with open(tmp_path / ".fgclep-state" / "w.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        live_tmp = tmp_path / ".w-000000.tar.tmp-999999"  # what a running writer has open
        live_tmp.write_bytes(b"partial")
        t = threading.Thread(
            target=write_shards,
            args=(LudbWfdb(IDS[:3]), out, 2, 1),
            kwargs={"progress": False, "log": messages.append},
        )
        t.start()
        time.sleep(0.5)
        assert t.is_alive() and live_tmp.exists() and not list(tmp_path.glob("w-*.tar"))
        assert any("waiting for another process" in m for m in messages)
        live_tmp.unlink()  # the first writer finishes ...
        fcntl.flock(held, fcntl.LOCK_UN)
    t.join(60)
    assert not t.is_alive()
    assert [x["meta"]["record_id"] for x in iter_samples(str(tmp_path / "w-{000000..000001}.tar"))] == IDS[:3]


def test_stale_temp_files_of_another_set_in_the_folder_are_left_alone(tmp_path):
    other = tmp_path / ".ludb-hr-000000.tar.tmp-12345"  # set 'ludb-hr', possibly being written right now
    other.write_bytes(b"x")
    mine = tmp_path / ".ludb-000000.tar.tmp-12345"  # this set's leftover of a killed run
    mine.write_bytes(b"x")
    write_shards(LudbWfdb(IDS[:2]), str(tmp_path / "ludb-%06d.tar"), 5, 1, progress=False, log=None)
    assert other.exists() and not mine.exists()


def test_failing_pipe_command_is_an_error_not_an_empty_shard(tmp_path):
    s = write_shards(LudbWfdb(IDS[:2]), str(tmp_path / "p-%06d.tar"), 5, 1, progress=False, log=None)
    good = expand_urls(s["urls"])[0]
    missing = tmp_path / "missing.tar"
    with pytest.raises(OSError, match="exited with status"):
        list(iter_samples(f"pipe:cat {missing}"))
    with pytest.raises(OSError, match=r"exited with status 3"):
        list(iter_samples(f"pipe:cat {good}; exit 3"))  # all samples read, then the command failed
    first = next(iter_samples(f"pipe:cat {good}"))  # stopping early is not a failure
    assert first["meta"]["record_id"] == IDS[0]


@pytest.mark.parametrize(
    ("out", "maxcount"),
    [("x-%s.tar", 5), ("x-%06d-%06d.tar", 5), ("x.tar", 5), ("50%/x-%06d.tar", 5), ("x-%06d.tar", 0)],
)
def test_bad_out_pattern_or_maxcount_is_a_clear_error_before_anything_is_written(tmp_path, out, maxcount):
    with pytest.raises(ValueError, match="--out must contain a shard number pattern|--maxcount must be"):
        write_shards(LudbWfdb(IDS[:2]), str(tmp_path / out), maxcount, 1, progress=False, log=None)
    assert not list(tmp_path.iterdir())


class _DottedIds(LudbWfdb):
    """Record ids '1.5' and '1_5' (both real LUDB signals) sanitise to the same key, ludb_1_5."""

    def load(self, item: str):
        rec = super().load(item.split("|")[0])
        rec.record_id = item.split("|")[1]
        return rec


def test_keys_repeated_across_shards_are_reported(tmp_path):
    messages: list[str] = []
    src = _DottedIds(["1|1.5", "2|1_5", "3|3"])
    s = write_shards(src, str(tmp_path / "d-%06d.tar"), 1, 1, progress=False, log=messages.append)
    keys = [x["__key__"] for x in iter_samples(s["urls"])]
    assert keys == ["ludb_1_5", "ludb_1_5", "ludb_3"]
    assert s["duplicate_keys"] == ["ludb_1_5"] and "WARNING: 1 key(s)" in messages[-1]
    clean = write_shards(LudbWfdb(IDS[:3]), str(tmp_path / "c-%06d.tar"), 1, 1, progress=False, log=None)
    assert "duplicate_keys" not in clean


def test_defaults_given_explicitly_resume_the_same_run(tmp_path):
    """A set written through the Python API (defaults left out) resumes under the CLI's explicit defaults,
    while a really different setting is refused and an unknown option is named."""
    out = str(tmp_path / "d-%06d.tar")
    write_shards(LudbWfdb(IDS[:4]), out, 2, 1, progress=False, log=None)
    explicit = {"min_seconds": 8.0, "crop": "start", "max_nan_gap_s": 0.1}
    s = write_shards(LudbWfdb(IDS[:4]), out, 2, 1, canon_opts=explicit, progress=False, log=None)
    assert s["written"] == 4
    with pytest.raises(RuntimeError, match="different input or settings"):
        write_shards(LudbWfdb(IDS[:4]), out, 2, 1, canon_opts={"crop": "center"}, progress=False, log=None)
    with pytest.raises(ValueError, match="unknown canonicalisation option.*min_secs"):
        write_shards(LudbWfdb(IDS[:4]), out, 2, 1, canon_opts={"min_secs": 5}, progress=False, log=None)


class _ShardCopy:
    """A source that re-emits the samples of a shard set as canonical samples (as stage 2 does)."""

    name = "copy"

    def __init__(self, urls: str, broken_key: str | None = None):
        self.samples = {s["__key__"]: s for s in iter_samples(urls)}
        self.broken_key = broken_key

    def items(self):
        return list(self.samples)

    def load(self, key):
        from fgclep_plugin.ecgdata.records import CanonicalSample

        s = self.samples[key]
        ecg = s["ecg"][:, :100] if key == self.broken_key else s["ecg"]
        return CanonicalSample(key, ecg, s["text"] + " extra.", {**s["meta"], "copied": True})


def test_writer_stores_canonical_samples_as_they_are_and_rejects_wrong_shapes(tmp_path):
    src_set = write_shards(
        LudbWfdb(IDS[:4]), str(tmp_path / "a" / "x-%06d.tar"), 10, 1, progress=False, log=None
    )
    originals = list(iter_samples(src_set["urls"]))
    copy = _ShardCopy(src_set["urls"], broken_key=originals[2]["__key__"])
    s = write_shards(copy, str(tmp_path / "b" / "y-%06d.tar"), 2, 1, progress=False, log=None)
    assert s["written"] == 3 and s["rejected"] == {"not-canonical": 1}
    rejects = (tmp_path / "b" / "y.rejects.jsonl").read_text()
    assert originals[2]["__key__"] in rejects and "(12, 100)" in rejects
    out = {x["__key__"]: x for x in iter_samples(s["urls"])}
    for o in originals[:2] + originals[3:]:
        x = out[o["__key__"]]
        np.testing.assert_array_equal(x["ecg"], o["ecg"])  # not canonicalised again
        assert x["text"] == o["text"] + " extra." and x["meta"]["copied"] is True
