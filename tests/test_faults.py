"""Hostile input against every command: each bad item becomes a reject or a recorded failure naming its file or
record, the run goes on, no traceback reaches the user, and the counts add up (in = out + rejects).

Real inputs only: the repository's LUDB shards, WFDB records of the shared data folder, shards written by the
project's own writer, and a bounded local HTTP server playing a hostile OpenAI-compatible LLM server.
"""

from __future__ import annotations

import io
import json
import tarfile
import warnings
from pathlib import Path

import pytest

from fgclep_plugin.ecgdata.reader import iter_raw

ROOT = Path(__file__).resolve().parents[1]
LUDB_SHARD = ROOT / "shards" / "ludb" / "ludb-test-000000.tar"


# --- shard builders ------------------------------------------------------------------------------------------


def _members(shard: Path = LUDB_SHARD, samples: int | None = None) -> list[tuple[str, bytes]]:
    """(name, bytes) of the members of the first ``samples`` samples of a shard, in order."""
    out, keys = [], []
    with tarfile.open(shard) as tar:
        for m in tar:
            key = m.name.split(".", 1)[0]
            if key not in keys:
                if samples is not None and len(keys) == samples:
                    break
                keys.append(key)
            out.append((m.name, tar.extractfile(m).read()))
    return out


def _tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _member_end(members: list[tuple[str, bytes]], n: int) -> int:
    """Byte offset in ``_tar_bytes(members)`` just after the first ``n`` members."""
    return sum(512 + -(-len(d) // 512) * 512 for _, d in members[:n])


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- the shard reader ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cut, complete",
    [
        ("after-3-samples-mid-4th-member", 3),  # the 4th sample's first member is cut
        ("after-1-sample-mid-2nd-member", 1),
        ("mid-header-after-3", 3),  # a header cut in half is not the end of the archive
        ("mid-name-after-3", 3),  # ... even when the cut hides the next member's name
        ("mid-3rd-sample-json", 2),  # the 3rd sample lost its json: incomplete, not yielded
    ],
)
def test_truncated_shard_yields_every_complete_sample(tmp_path, cut, complete):
    members = _members(samples=5)
    data = _tar_bytes(members)
    ends = {
        "after-3-samples-mid-4th-member": _member_end(members, 9) + 512 + 100,
        "after-1-sample-mid-2nd-member": _member_end(members, 3) + 512 + 10,
        "mid-header-after-3": _member_end(members, 9) + 300,
        "mid-name-after-3": _member_end(members, 9) + 5,
        "mid-3rd-sample-json": _member_end(members, 8) + 512 + 5,
    }
    shard = _write(tmp_path / "cut-000000.tar", data[: ends[cut]])
    got = []
    with pytest.raises(ValueError, match=r"cut-000000\.tar.*truncated"):
        got.extend(iter_raw(str(shard)))
    want = [n.split(".")[0] for n, _ in members][::3][:complete]
    assert [g["__key__"] for g in got] == want
    assert all({"npy", "txt", "json"} <= set(g) for g in got)


def test_duplicate_key_in_one_shard_is_kept_apart(tmp_path):
    m = _members(samples=3)  # a.npy a.json a.txt b.* c.*
    a, b, c = m[0:3], m[3:6], m[6:9]
    renamed_c = [(n.replace(c[0][0].split(".")[0], a[0][0].split(".")[0]), d) for n, d in c]
    # adjacent repeat (a, a) and a repeat after another sample (a, b, a)
    shard = _write(tmp_path / "dup-000000.tar", _tar_bytes(a + renamed_c + b + renamed_c))
    got = list(iter_raw(str(shard)))
    assert len(got) == 4
    txt = [next(d for n, d in part if n.endswith(".txt")) for part in (a, c, b, c)]
    npy = [next(d for n, d in part if n.endswith(".npy")) for part in (a, c, b, c)]
    assert [g["txt"] for g in got] == txt and [g["npy"] for g in got] == npy


# --- the commands, in process --------------------------------------------------------------------------------

MODEL = "FGCLEP-Tiny"


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``fgclep ARGV`` run in this process; warnings are part of stderr."""
    from fgclep_plugin.cli import main

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            rc = main(list(argv))
        except SystemExit as e:  # argparse usage errors
            rc = e.code
    out, err = capsys.readouterr()
    err += "".join(f"{w.category.__name__}: {w.message}\n" for w in caught)
    assert "Traceback" not in out + err, err
    return rc, out, err


def _augment(capsys, tmp_path: Path, data: Path | str, ckpt: str, *extra: str) -> tuple[int, str, str]:
    return _cli(
        capsys, "augment", "--data", str(data), "--out", str(tmp_path / "aug" / "a-%06d.tar"),
        "--cache", str(tmp_path / "cache"), "--model", MODEL, "--checkpoint", ckpt, "--quiet",
        "--calib-size", "4", "--summary-json", str(tmp_path / "aug-summary.json"), *extra,
    )  # fmt: skip


def _rejects(tmp_path: Path) -> list[dict]:
    path = tmp_path / "aug" / "a.rejects.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _out_keys(tmp_path: Path) -> list[str]:
    return [r["__key__"] for p in sorted((tmp_path / "aug").glob("a-*.tar")) for r in iter_raw(str(p))]


def test_augment_keeps_every_complete_sample_of_a_truncated_shard(capsys, tmp_path, ckpt):
    members = _members(samples=5)
    shard = _write(tmp_path / "in" / "cut-000000.tar", _tar_bytes(members)[: _member_end(members, 9) + 700])
    rc, _, err = _augment(capsys, tmp_path, shard, ckpt)
    assert rc == 0, err
    assert _out_keys(tmp_path) == [n.split(".")[0] for n, _ in members[:9:3]]
    (rej,) = _rejects(tmp_path)
    assert rej["reason"] == "unreadable-shard-rest" and "cut-000000.tar" in rej["message"]
    assert json.loads((tmp_path / "aug-summary.json").read_text())["samples"] == 3


def test_augment_rejects_a_repeated_key_instead_of_merging(capsys, tmp_path, ckpt):
    m = _members(samples=3)
    a, b, c = m[0:3], m[3:6], m[6:9]
    key_a, key_c = a[0][0].split(".")[0], c[0][0].split(".")[0]
    shard = _write(
        tmp_path / "in" / "dup-000000.tar",
        _tar_bytes(a + b + [(n.replace(key_c, key_a), d) for n, d in c]),
    )
    rc, _, err = _augment(capsys, tmp_path, shard, ckpt)
    assert rc == 0, err
    out = {r["__key__"]: r for r in iter_raw(str(tmp_path / "aug" / "a-000000.tar"))}
    assert list(out) == [key_a, b[0][0].split(".")[0]]
    assert out[key_a]["npy"] == a[0][1]  # the first sample's ECG ...
    assert json.loads(out[key_a]["json"])["stage2"]["report"] == a[1][1].decode()  # ... with its own report
    (rej,) = _rejects(tmp_path)
    assert rej["reason"] == "duplicate-key" and key_a in rej["message"] and "dup-000000.tar" in rej["message"]


def test_features_generate_reads_every_complete_sample_of_a_truncated_shard(capsys, tmp_path):
    members = _members(samples=5)
    shard = _write(tmp_path / "in" / "cut-000000.tar", _tar_bytes(members)[: _member_end(members, 9) + 700])
    rc, out, err = _cli(
        capsys, "features", "generate", "--data", str(shard), "--cache", str(tmp_path / "c"), "--backend", "kb",
        "--quiet",
    )  # fmt: skip
    assert rc == 0, err
    assert json.loads(out)["samples"] == 3 and "cut-000000.tar" in err


# --- training ------------------------------------------------------------------------------------------------


def _train(capsys, *argv: str) -> tuple[int, str]:
    from fgclep_plugin.train import main

    rc = main(list(argv))
    _, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, err


def _tiny_run(logs: Path, data: str, *extra: str) -> list[str]:
    return [
        "--model", MODEL, "--train-data", data, "--train-num-samples", "8", "--batch-size", "4",
        "--workers", "0", "--lr", "1e-3", "--warmup", "1", "--device", "cpu", "--precision", "fp32",
        "--seed", "0", "--logs", str(logs), "--name", "run", "--epochs", "1", *extra,
    ]  # fmt: skip


class _RunsCode:
    """Unpickling this runs ``touch MARKER``: what a crafted checkpoint does to a loader that allows pickles."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_resume_refuses_a_checkpoint_that_runs_code(capsys, tmp_path, monkeypatch):
    import torch

    marker, crafted = tmp_path / "code-ran", tmp_path / "crafted.pt"
    torch.save({"epoch": 1, "state_dict": {}, "payload": _RunsCode(marker)}, crafted)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch told to allow pickles by default
    rc, err = _train(capsys, *_tiny_run(tmp_path / "logs", str(LUDB_SHARD), "--resume", str(crafted)))
    assert not marker.exists()
    assert rc == 1 and f"{crafted}: refused to load" in err


def test_resume_latest_skips_a_checkpoint_cut_by_a_kill(tmp_path):
    # a kill -9 while open_clip writes epoch_2.pt leaves a zip without its central directory; --resume latest
    # resumes from the last complete checkpoint (and writes epoch_2.pt again) instead of a torch traceback.
    # Own processes: open_clip's logging setup outlives an in-process run (handlers on closed capture streams).
    import subprocess
    import sys

    import torch

    logs = tmp_path / "logs"
    cmd = [
        sys.executable,
        "-m",
        "fgclep_plugin.train",
        *_tiny_run(logs, str(LUDB_SHARD), "--save-frequency", "1"),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    ckpts = logs / "run" / "checkpoints"
    whole = (ckpts / "epoch_1.pt").read_bytes()
    (ckpts / "epoch_2.pt").write_bytes(whole[: len(whole) // 2])
    cmd[cmd.index("--epochs") + 1] = "2"
    r = subprocess.run([*cmd, "--resume", "latest"], check=False, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"{ckpts / 'epoch_2.pt'}: incomplete checkpoint skipped" in r.stderr
    assert torch.load(ckpts / "epoch_2.pt", weights_only=True)["epoch"] == 2
    assert (ckpts / "epoch_1.pt").read_bytes() == whole  # resumed from it, left as it was


@pytest.mark.parametrize("resampled", [False, True])
def test_training_on_shards_that_do_not_exist_stops_before_any_work(capsys, tmp_path, resampled):
    spec = str(tmp_path / "nope-{000000..000003}.tar")
    extra = ["--dataset-resampled"] if resampled else []
    rc, err = _train(capsys, *_tiny_run(tmp_path / "logs", spec, *extra))
    assert rc == 1 and err.strip().splitlines() == [
        f"fgclep_plugin.train: error: --train-data {spec!r} matches no shard file"
    ]
    assert not (tmp_path / "logs").exists()  # nothing written: no log folder, no untrained checkpoint


# --- the candidate cache and a hostile OpenAI-compatible server ------------------------------------------------

SHARD5 = "ludb5-000000.tar"


@pytest.fixture(scope="module")
def shard5(tmp_path_factory) -> Path:
    """The first 5 LUDB test samples as a shard of their own (5 distinct reports)."""
    return _write(tmp_path_factory.mktemp("in5") / SHARD5, _tar_bytes(_members(samples=5)))


def _reports(shard: Path) -> list[str]:
    from fgclep_plugin.augment.text import normalise_report

    return [normalise_report(r["txt"].decode()) for r in iter_raw(str(shard))]


DEEP = "[" * 200_000 + "]" * 200_000
HOSTILE_REPLIES = {  # name -> (HTTP status, content type, body) sent for the victim report
    "html-body-status-200": (200, "text/html", b"<html><body>502 Bad Gateway</body></html>"),
    "deeply-nested-body": (200, "application/json", DEEP.encode()),
    "5000-digit-number-body": (200, "application/json", b'{"choices": [{"index": ' + b"7" * 5000 + b"}]}"),
    "non-utf8-body": (200, "application/json", b'{"choices": "\xff\xfe\xfa"}'),
    "json-list-body": (200, "application/json", b"[1, 2, 3]"),
    "choices-a-string": (200, "application/json", b'{"choices": "abc"}'),
    "content-a-list": (200, "application/json", b'{"choices": [{"message": {"content": ["st elevation"]}}]}'),
    "content-a-number": (200, "application/json", b'{"choices": [{"message": {"content": 12}}]}'),
    "content-deeply-nested-list": (
        200, "application/json", json.dumps({"choices": [{"message": {"content": DEEP[:40000]}}]}).encode()
    ),
    "content-5000-digit-number": (
        200, "application/json", json.dumps({"choices": [{"message": {"content": "[" + "9" * 5000 + "]"}}]}).encode()
    ),
    "status-500": (500, "text/plain", b"internal error"),
}  # fmt: skip


class _LlmServer:
    """A local OpenAI-compatible chat server: a good answer for every report except ``victim``, which gets
    ``HOSTILE_REPLIES[mode]``. Runs in a daemon thread and stops itself after ``lifetime`` seconds."""

    def __init__(self, victim: str, mode: str, lifetime: float = 120.0):
        import http.server
        import threading

        outer = self
        self.requests = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests += 1
                if f"Report: {victim}\n" in body["messages"][-1]["content"]:
                    status, ctype, data = HOSTILE_REPLIES[mode]
                else:
                    status, ctype = 200, "application/json"
                    answer = {"message": {"content": '["st elevation", "prolonged pr interval"]'}}
                    data = json.dumps({"choices": [answer]}).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.timer = threading.Timer(lifetime, self.server.shutdown)
        self.timer.daemon = True
        self.timer.start()

    def close(self) -> None:
        self.timer.cancel()
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("mode", sorted(HOSTILE_REPLIES))
def test_hostile_llm_answer_is_a_recorded_failure_and_the_run_goes_on(
    capsys, tmp_path, shard5, mode, monkeypatch
):
    from fgclep_plugin.augment.backends import OpenAIBackend
    from fgclep_plugin.augment.cache import load_entries
    from fgclep_plugin.augment.text import PROMPT_VERSION, report_key

    monkeypatch.setattr(OpenAIBackend, "sleep", staticmethod(lambda seconds: None))  # no real backoff waits
    reports = _reports(shard5)
    victim = reports[0]
    server = _LlmServer(victim, mode)
    try:
        rc, out, err = _cli(
            capsys, "features", "generate", "--data", str(shard5), "--cache", str(tmp_path / "c"),
            "--backend", "openai", "--base-url", server.url, "--model", "m", "--quiet", "--concurrency", "2",
        )  # fmt: skip
    finally:
        server.close()
    assert rc == 0, err
    summary = json.loads(out)
    unique = len(set(reports))
    # a string answer that is no list of features is an answer (unparsable); every other reply a failed request
    status = "unparsable" if mode in ("content-5000-digit-number", "content-deeply-nested-list") else "error"
    assert summary["calls_made"] == unique and summary["status"][status] == 1
    assert summary["unanswered"] == summary["failures"] == (status == "error")
    assert repr(victim)[:40] in err  # the failure names the report
    entries = load_entries(tmp_path / "c", "openai", "m", PROMPT_VERSION, include_errors=True)
    assert len(entries) == unique  # every report recorded: answers + the one failure
    bad = entries[report_key(victim)]
    assert bad["status"] == status and bad["features"] == [] and bad["raw"]  # the reason / the answer is kept
    assert all(
        e["features"] == ["st elevation", "prolonged pr interval"] for k, e in entries.items() if e is not bad
    )


def _cache_line(**over) -> bytes:
    from fgclep_plugin.augment.text import PROMPT_VERSION

    entry = {"key": "ab" * 32, "backend": "openai", "model": "m", "prompt_version": PROMPT_VERSION,
             "report": "sinus rhythm.", "features": ["st elevation"], "status": "ok", "raw": ""}  # fmt: skip
    return (json.dumps({**entry, **over}) + "\n").encode()


BAD_CACHE_LINES = {
    "binary-bytes": b"\xff\xfe\x00\x01garbage\x80\x81\n",
    "not-json": b"{this is not json\n",
    "json-list": b'["a", "b"]\n',
    "key-a-list": _cache_line(key=["ab"]),
    "features-a-string": _cache_line(features="st elevation"),
    "features-numbers": _cache_line(features=[1, 2]),
    "unknown-status": _cache_line(status="great"),
    "5000-digit-number": b'{"key": "k", "n": ' + b"1" * 5000 + b"}\n",
    "deeply-nested": (DEEP[:20000] + "\n").encode(),
}


@pytest.mark.parametrize("bad", sorted(BAD_CACHE_LINES))
def test_bad_cache_line_is_skipped_with_file_and_line_named(tmp_path, bad):
    from fgclep_plugin.augment.cache import load_candidates
    from fgclep_plugin.augment.text import PROMPT_VERSION

    part = tmp_path / "c" / "part-00000-of-00001.jsonl"
    good = _cache_line(key="cd" * 32)
    _write(part, good + BAD_CACHE_LINES[bad] + good.replace(b"cd" * 32, b"ef" * 32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = load_candidates(tmp_path / "c", "openai", "m", PROMPT_VERSION)
    assert got == {"cd" * 32: ["st elevation"], "ef" * 32: ["st elevation"]}  # in = out + skipped: 3 = 2 + 1
    (w,) = [str(x.message) for x in caught]
    assert w.startswith(f"{part}:2: cache line skipped")


# --- converters and settings ---------------------------------------------------------------------------------

LUDB_DATA = ROOT.parent / "shared" / "data" / "ludb" / "data"


def _wfdb_folder(tmp_path: Path, rates: dict[str, str]) -> Path:
    """LUDB records (real WFDB files) under new names, each header claiming the sampling rate given."""
    root = tmp_path / "wfdb"
    root.mkdir()
    rows = ["record,report"]
    for i, (name, rate) in enumerate(rates.items(), 1):
        hea = (LUDB_DATA / f"{i}.hea").read_text().replace(f"{i}.dat", f"{name}.dat")
        first, rest = hea.split("\n", 1)
        parts = first.split()
        (root / f"{name}.hea").write_text(" ".join([name, parts[1], rate, *parts[3:]]) + "\n" + rest)
        (root / f"{name}.dat").write_bytes((LUDB_DATA / f"{i}.dat").read_bytes())
        rows.append(f"{name},sinus rhythm. normal ecg.")
    (root / "reports.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.mark.parametrize("rate", ["0.5", "25000"])
def test_implausible_sampling_rate_is_rejected_naming_the_record(capsys, tmp_path, rate):
    root = _wfdb_folder(tmp_path, {"good": "500", "odd": rate})
    out = tmp_path / "out" / "g-%06d.tar"
    rc, _, err = _cli(capsys, "shards", "generic", "--root", str(root), "--out", str(out), "--quiet")
    assert rc == 0, err
    rejects = [json.loads(x) for x in (tmp_path / "out" / "g.rejects.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rejects] == ["bad-fs"] and "odd" in rejects[0]["message"]
    assert [r["__key__"] for r in iter_raw(str(tmp_path / "out" / "g-000000.tar"))] == [
        "generic_good"
    ]  # 2 = 1 + 1


def test_sampling_rate_check_can_be_overridden(capsys, tmp_path):
    root = _wfdb_folder(tmp_path, {"good": "500", "odd": "0.5"})
    out = tmp_path / "out" / "g-%06d.tar"
    rc, _, err = _cli(
        capsys, "shards", "generic", "--root", str(root), "--out", str(out), "--quiet", "--min-fs", "0.1"
    )
    assert rc == 0, err
    assert len(list(iter_raw(str(tmp_path / "out" / "g-000000.tar")))) == 2


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--cosine-threshold", "nan"),
        ("--cosine-threshold", "1.5"),
        ("--paper-threshold", "2"),
        ("--paper-threshold", "inf"),
        ("--quantile", "0"),
        ("--calib-size", "0"),
        ("--calib-size", "ten"),
    ],
)
def test_nonsense_rule_settings_are_usage_errors(capsys, tmp_path, flag, value):
    rc, _, err = _cli(
        capsys, "augment", "--data", str(LUDB_SHARD), "--out", str(tmp_path / "a-%06d.tar"),
        "--cache", str(tmp_path / "c"), "--checkpoint", "none", flag, value,
    )  # fmt: skip
    assert rc == 2 and f"argument {flag}: " in err
    assert not (tmp_path / "c").exists() and not list(tmp_path.glob("*.tar"))  # stopped before any work


def _npy(a) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


BAD_SAMPLES = {  # name -> member suffix -> replacement bytes
    "json-a-list": {"json": b"[1, 2]"},
    "json-a-string": {"json": b'"a report"'},
    "json-not-utf8": {"json": b"\xff\xfe{}"},
    "npy-of-strings": {"npy": None},  # filled in by the test: a [12, 5000] array of strings
    "npy-wrong-shape": {"npy": None},
    "npy-pickled-object": {
        "npy": b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (12, 5000), }"
        + b" " * 44
        + b"\n"
    },
    "txt-not-utf8": {"txt": b"\xff\xfe\xfa"},
    "no-npy": {"npy": b""},
}


@pytest.mark.parametrize("bad", sorted(BAD_SAMPLES))
def test_augment_rejects_a_bad_sample_and_keeps_the_rest(capsys, tmp_path, ckpt, bad):
    import numpy as np

    members = _members(samples=4)
    victim = members[3][0].split(".")[0]  # the 2nd sample
    change = dict(BAD_SAMPLES[bad])
    if bad == "npy-of-strings":
        change["npy"] = _npy(np.full((12, 5000), "x"))
    if bad == "npy-wrong-shape":
        change["npy"] = _npy(np.zeros((12, 100), np.float16))
    crafted = []
    for name, data in members:
        key, suffix = name.split(".", 1)
        if key == victim and suffix in change:
            if not change[suffix]:
                continue  # the member is left out
            data = change[suffix]
        crafted.append((name, data))
    shard = _write(tmp_path / "in" / "bad-000000.tar", _tar_bytes(crafted))
    rc, _, err = _augment(capsys, tmp_path, shard, ckpt)
    assert rc == 0, err
    (rej,) = _rejects(tmp_path)
    assert (
        rej["reason"] == "corrupt-sample" and victim in rej["message"] and "bad-000000.tar" in rej["message"]
    )
    assert _out_keys(tmp_path) == [n.split(".")[0] for n, _ in members[::3] if not n.startswith(victim + ".")]
    # a re-run resumes over the same output (the summary reads every written sample back)
    rc, _, err = _augment(capsys, tmp_path, shard, ckpt)
    assert rc == 0 and json.loads((tmp_path / "aug-summary.json").read_text())["samples"] == 3


def test_duplicate_json_keys_do_not_crash_the_summary(capsys, tmp_path, ckpt):
    members = _members(samples=3)
    crafted = [
        (n, d[:-1] + b', "source": "again", "stage2": {"x": 1}}' if n.endswith(".json") else d)
        for n, d in members
    ]
    shard = _write(tmp_path / "in" / "dupjson-000000.tar", _tar_bytes(crafted))
    for _ in range(2):  # the first run and a resumed one
        rc, _, err = _augment(capsys, tmp_path, shard, ckpt)
        assert rc == 0, err
        assert json.loads((tmp_path / "aug-summary.json").read_text())["samples"] == 3


# --- output folders ------------------------------------------------------------------------------------------


def _unwritable_out_cases(tmp_path: Path, ckpt: str) -> dict[str, list[str]]:
    """Every command that writes, pointed at a folder that cannot be created (its parent is a file)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "out"
    return {
        "shards": ["shards", "generic", "--root", str(tmp_path / "nowhere"), "--out", str(out / "g-%06d.tar")],
        "augment": ["augment", "--data", str(LUDB_SHARD), "--out", str(out / "a-%06d.tar"), "--cache",
                    str(tmp_path / "c"), "--model", MODEL, "--checkpoint", ckpt, "--quiet"],
        "features-generate": ["features", "generate", "--data", str(LUDB_SHARD), "--cache", str(out),
                              "--backend", "kb", "--quiet"],
        "synth": ["synth", "--out", str(out), "--train", "2", "--val", "0", "--test", "0", "--quiet"],
        "retrieve": ["retrieve", "--data", str(LUDB_SHARD), "--model", MODEL, "--checkpoint", "none",
                     "--out", str(out), "--query", "sinus rhythm", "--quiet"],
    }  # fmt: skip


@pytest.mark.parametrize("command", ["shards", "augment", "features-generate", "synth", "retrieve"])
def test_unwritable_output_folder_stops_before_any_work(capsys, tmp_path, ckpt, command):
    argv = _unwritable_out_cases(tmp_path, ckpt)[command]
    rc, _, err = _cli(capsys, *argv)
    lines = [x for x in err.splitlines() if x.strip()]
    assert rc == 1 and len(lines) == 1 and "a-file/out is not writable" in lines[0], err
    assert not (tmp_path / "c").exists()  # no cache written: stopped before any work


def test_augment_removes_partial_files_of_a_killed_run(capsys, tmp_path, ckpt, shard5):
    out = tmp_path / "aug"
    out.mkdir()
    dead = 2**22 + 12345  # no such process
    stale = [out / f".a-000000.tar.tmp-{dead}", out / ".fgclep-state" / f".a-000000.tar.json.tmp-{dead}"]
    stale[1].parent.mkdir()
    for p in stale:
        p.write_bytes(b"partial")
    rc, _, err = _augment(capsys, tmp_path, shard5, ckpt)
    assert rc == 0, err
    assert not any(p.exists() for p in stale)
    assert len(_out_keys(tmp_path)) == 5


# --- checkpoint identity -------------------------------------------------------------------------------------


def test_replacing_the_checkpoint_by_one_of_the_same_size_is_not_a_resume(capsys, tmp_path, ckpt, shard5):
    import torch

    rc, _, err = _augment(capsys, tmp_path, shard5, ckpt)
    assert rc == 0, err
    other = tmp_path / "o" / "tiny.pt"  # torch names the archive after the file: same name, same size
    other.parent.mkdir()
    sd = torch.load(ckpt, weights_only=True)
    for v in sd.values():
        if v.is_floating_point():
            v.add_(1.0)
    torch.save(sd, other)
    assert other.stat().st_size == Path(ckpt).stat().st_size
    swapped = tmp_path / "tiny.pt"  # the same path and size, other weights
    swapped.write_bytes(Path(ckpt).read_bytes())
    rc, _, err = _augment(capsys, tmp_path / "x", shard5, str(swapped))
    assert rc == 0, err
    swapped.write_bytes(other.read_bytes())
    rc, _, err = _augment(capsys, tmp_path / "x", shard5, str(swapped))
    assert rc == 1 and "checkpoint" in err and "aug" in err  # refuses to resume with stale results


def test_checkpoint_is_hashed_once_per_path_size_and_mtime(tmp_path, monkeypatch):
    import hashlib

    from fgclep_plugin.ecgdata import manifest

    path = tmp_path / "c.pt"
    path.write_bytes(b"x" * 3_000_000)
    calls = []
    real = hashlib.sha256
    monkeypatch.setattr(manifest.hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    first = manifest.checkpoint_id(path)
    assert manifest.checkpoint_id(path) == first and len(calls) == 1
    assert first["sha256"] == real(path.read_bytes()).hexdigest()
    path.write_bytes(b"y" * 3_000_000)  # same size, new content
    assert manifest.checkpoint_id(path)["sha256"] == real(b"y" * 3_000_000).hexdigest() and len(calls) == 2


# --- kill -9 at a random point, then re-run: the same bytes as an uninterrupted run ------------------------------


def _digests(folder: Path, pattern: str = "*.tar") -> dict[str, str]:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob(pattern))}


def _fgclep_cmd(*argv: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "fgclep_plugin.cli", *argv]


def _reference_then_kill_and_rerun(
    cmd, tmp_path: Path, started, seed: int, timeout: float = 300
) -> tuple[Path, Path]:
    """Run ``cmd(tmp_path / "ref")`` to the end (the reference); then start ``cmd(killed)`` with ``killed =
    tmp_path / "killed"``, wait until ``started(killed)`` (its first output exists), wait a random 0-0.6 s more,
    SIGKILL its process group, and run ``cmd(killed)`` again to the end. Returns (ref, killed)."""
    import os
    import random
    import signal
    import subprocess
    import time

    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(cmd(ref), check=True, capture_output=True, timeout=timeout)
    proc = subprocess.Popen(
        cmd(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + timeout
    while not started(killed) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(random.Random(seed).uniform(0.0, 0.6))
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    r = subprocess.run(cmd(killed), capture_output=True, text=True, timeout=timeout, check=False)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    return ref, killed


def _same_shards(ref: Path, out: Path, count: int) -> None:
    """``out`` holds the same ``count`` shards as ``ref``, byte for byte, and no temporary file is left."""
    digests = _digests(ref)
    assert len(digests) == count and _digests(out) == digests
    assert not list(out.glob(".*.tmp-*"))


@pytest.mark.slow  # two fgclep shards runs and a killed one (~80 s on 2 loaded cores)
def test_kill_shards_then_rerun_gives_the_same_bytes(tmp_path):
    root = ROOT.parent / "shared" / "data" / "ludb"

    def cmd(out: Path) -> list[str]:
        return _fgclep_cmd(
            "shards", "ludb", "--root", str(root), "--out", str(out / "l-%06d.tar"), "--maxcount", "4",
            "--limit", "24", "--quiet",
        )  # fmt: skip

    def started(out: Path) -> bool:
        return any(out.glob(".l-*.tmp-*")) or any(out.glob("l-*.tar"))

    ref, out = _reference_then_kill_and_rerun(cmd, tmp_path, started, seed=1)
    _same_shards(ref, out, 6)
    assert (out / "sizes.json").read_bytes() == (ref / "sizes.json").read_bytes()
    assert not list(out.glob(".fgclep-state/.*.tmp-*"))


def test_shards_removes_partial_files_of_a_killed_run(capsys, tmp_path):
    root = ROOT.parent / "shared" / "data" / "ludb"
    out = tmp_path / "out"
    dead = 2**22 + 12345  # no such process
    stale = [out / f".l-000000.tar.tmp-{dead}", out / f".sizes.json.tmp-{dead}",
             out / ".fgclep-state" / f".l-000000.tar.json.tmp-{dead}"]  # fmt: skip
    stale[2].parent.mkdir(parents=True)
    for p in stale:
        p.write_bytes(b"partial")
    argv = [
        "shards",
        "ludb",
        "--root",
        str(root),
        "--out",
        str(out / "l-%06d.tar"),
        "--limit",
        "3",
        "--quiet",
    ]
    rc, _, err = _cli(capsys, *argv)
    assert rc == 0, err
    assert not any(p.exists() for p in stale) and len(list(iter_raw(str(out / "l-000000.tar")))) == 3


@pytest.mark.slow  # three features generate processes (~55 s on 2 loaded cores)
def test_kill_features_generate_then_rerun_gives_the_same_answers(tmp_path):
    data = str(ROOT / "shards" / "ludb" / "ludb-{train-000000,train-000001,train-000002,test-000000}.tar")

    def cmd(cache: Path) -> list[str]:
        return _fgclep_cmd(
            "features", "generate", "--data", data, "--cache", str(cache), "--backend", "kb", "--batch-size", "1",
            "--quiet",
        )  # fmt: skip

    def started(cache: Path) -> bool:
        return any(p.stat().st_size for p in cache.glob("part-*.jsonl"))

    def answers(cache: Path) -> dict[str, list[bytes]]:
        return {p.name: sorted(p.read_bytes().splitlines()) for p in sorted(cache.glob("*.jsonl"))}

    ref, cache = _reference_then_kill_and_rerun(cmd, tmp_path, started, seed=2)
    assert answers(cache) == answers(ref)  # every answer once, none lost, none repeated (order aside)


@pytest.mark.slow  # three augment processes: ~50 s on 2 loaded cores
def test_kill_augment_then_rerun_gives_the_same_bytes(tmp_path, ckpt):
    shards = [tmp_path / "in" / f"s-{k:06d}.tar" for k in range(3)]
    members = _members(samples=12)
    for k, path in enumerate(shards):
        _write(path, _tar_bytes(members[12 * k : 12 * (k + 1)]))
    data = str(tmp_path / "in" / "s-{000000..000002}.tar")

    def cmd(out: Path) -> list[str]:
        return _fgclep_cmd(
            "augment", "--data", data, "--out", str(out / "a-%06d.tar"), "--cache", str(tmp_path / "cache"),
            "--model", MODEL, "--checkpoint", ckpt, "--calib-size", "6", "--quiet",
        )  # fmt: skip

    def started(out: Path) -> bool:
        return any(out.glob("a-*.tar")) or any(out.glob(".a-*.tmp-*"))

    ref, out = _reference_then_kill_and_rerun(cmd, tmp_path, started, seed=3)
    _same_shards(ref, out, 3)


@pytest.mark.slow  # two short training runs and a resumed one (~2 min on 2 loaded cores)
def test_kill_training_then_resume_latest_gives_the_same_weights(tmp_path):
    import sys

    import torch

    def cmd(logs: Path) -> list[str]:
        return [
            sys.executable, "-m", "fgclep_plugin.train",
            *_tiny_run(logs, str(ROOT / "shards" / "ludb" / "ludb-train-000000.tar"), "--resume", "latest"),
            "--epochs", "3", "--train-num-samples", "16", "--save-frequency", "1", "--ecg-deterministic-data",
        ]  # fmt: skip

    def started(logs: Path) -> bool:
        return (logs / "run" / "checkpoints" / "epoch_1.pt").exists()

    ref_logs, logs = _reference_then_kill_and_rerun(cmd, tmp_path, started, seed=4, timeout=900)
    ref = torch.load(ref_logs / "run" / "checkpoints" / "epoch_3.pt", weights_only=True)
    got = torch.load(logs / "run" / "checkpoints" / "epoch_3.pt", weights_only=True)
    assert got["epoch"] == ref["epoch"] == 3
    assert all(torch.equal(got["state_dict"][k], v) for k, v in ref["state_dict"].items())
