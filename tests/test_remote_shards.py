"""Shards read over HTTP (a local ``http.server``), through ``file:`` and with a missing fsspec package: every
``fgclep`` command that reads shards gives on ``http://`` URLs what it gives on the same local files."""

from __future__ import annotations

import functools
import http.server
import io
import itertools
import json
import shutil
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from fgclep_plugin.cli import main
from fgclep_plugin.ecgdata.opener import MissingFilesystem, open_url
from fgclep_plugin.ecgdata.reader import TruncatedShard, expand_urls, iter_raw, read_sizes

ROOT = Path(__file__).resolve().parents[1]
LUDB = ROOT / "shards" / "ludb"
TRAIN = "ludb-train-{000000..000002}.tar"
SMALL = "small/s-{000000..000002}.tar"  # 3 shards of 4 LUDB samples (their own sizes.json): augment input


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the folder; ``/lying/NAME`` announces NAME's full length, sends a third and closes (a cut
    connection)."""

    def log_message(self, *args) -> None:  # no access log in the test output
        pass

    def do_GET(self) -> None:
        if not self.path.startswith("/lying/"):
            return super().do_GET()
        data = (Path(self.directory) / self.path.removeprefix("/lying/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 3])
        self.close_connection = True
        return None


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # a reader stopping early closes its connection
        pass


def _write_small_set(folder: Path) -> None:
    """``SMALL`` + its ``sizes.json`` in ``folder`` from the first 12 LUDB train samples (members as they are)."""
    raws = [r for r, _ in zip(iter_raw(str(LUDB / "ludb-train-000000.tar")), range(12))]
    sizes = {}
    for k, name in enumerate(expand_urls(SMALL)):
        with tarfile.open(folder / name, "w", format=tarfile.USTAR_FORMAT) as tar:
            for raw in raws[4 * k : 4 * k + 4]:
                for suffix in ("npy", "txt", "json"):
                    info = tarfile.TarInfo(f"{raw['__key__']}.{suffix}")
                    info.size = len(raw[suffix])
                    tar.addfile(info, io.BytesIO(raw[suffix]))
        sizes[Path(name).name] = 4
    (folder / "small" / "sizes.json").write_text(json.dumps(sizes))


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> tuple[Path, str]:
    """(local folder, its http:// URL): the example LUDB shards and a small set, served from 127.0.0.1."""
    folder = tmp_path_factory.mktemp("served")
    for p in LUDB.iterdir():
        shutil.copy(p, folder / p.name)
    (folder / "small").mkdir()
    _write_small_set(folder)
    data = (folder / "ludb-train-000000.tar").read_bytes()
    (folder / "cut").mkdir()
    (folder / "cut" / "c-000000.tar").write_bytes(data[: len(data) // 3])  # cut inside a member
    server = _Server(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()


def _run(capsys, argv: list[str]) -> str:
    """stdout of ``fgclep ARGV`` run in this process (exit status 0 asserted)."""
    capsys.readouterr()
    assert main(argv) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_http_samples_and_sizes_equal_local(served):
    folder, base = served
    remote, local = f"{base}/{TRAIN}", str(folder / TRAIN)
    got, want = list(iter_raw(remote)), list(iter_raw(local))
    assert [r["__url__"] for r in got][:1] == [f"{base}/ludb-train-000000.tar"]
    assert [{k: v for k, v in r.items() if k != "__url__"} for r in got] == [
        {k: v for k, v in r.items() if k != "__url__"} for r in want
    ]
    assert read_sizes(remote) == read_sizes(local) == 150  # the sizes.json beside the remote shards
    assert read_sizes(f"{base}/cut/c-000000.tar") is None  # no sizes.json there


def test_http_errors_name_the_url(served):
    folder, base = served
    with pytest.raises(FileNotFoundError, match="missing-000000.tar"):
        list(iter_raw(f"{base}/missing-000000.tar"))
    local = [r["__key__"] for r in itertools.islice(iter_raw(str(folder / TRAIN)), 50)]
    got = []
    with pytest.raises(TruncatedShard, match=rf"{base}/cut/c-000000.tar: truncated"):
        got.extend(r["__key__"] for r in iter_raw(f"{base}/cut/c-000000.tar"))
    assert got and got == local[: len(got)]  # every complete sample before the cut
    got = []
    with pytest.raises(OSError, match=rf"{base}/lying/ludb-train-000000.tar: read failed"):
        got.extend(r["__key__"] for r in iter_raw(f"{base}/lying/ludb-train-000000.tar"))
    assert got and got == local[: len(got)]  # a connection cut mid-shard: an I/O error, as on a local disk


def test_info_on_http_equals_local(served, capsys):
    folder, base = served
    remote = _run(capsys, ["info", "--json", f"{base}/{TRAIN}"])
    assert json.loads(remote)["samples"] == 150
    assert remote == _run(capsys, ["info", "--json", str(folder / TRAIN)])


def test_show_and_retrieve_on_http_equal_local(served, capsys, tmp_path):
    folder, base = served
    key = next(iter_raw(str(folder / SMALL)))["__key__"]

    def show(data: str) -> str:
        return _run(capsys, ["show", data, "--key", key, "--out", str(tmp_path / "s.png")]).splitlines()[0]

    assert show(f"{base}/{SMALL}") == show(str(folder / SMALL)) and show(str(folder / SMALL)).startswith(key)

    def retrieve(data: str) -> str:
        argv = ["retrieve", "--data", data, "--model", "FGCLEP-Tiny", "--checkpoint", "none"]
        out = _run(capsys, [*argv, "--query", "sinus rhythm", "--ecg", key, "--k", "3", "--quiet"])
        return out.replace(data, "DATA")  # the header names the shards

    remote = retrieve(f"{base}/{SMALL}")
    assert key in remote and "12 ECGs" in remote and remote == retrieve(str(folder / SMALL))


def test_eval_zeroshot_on_http_equals_local(served, capsys, tmp_path, ckpt):
    from fgclep_plugin.evaluate.zeroshot import clear_memo, shard_files

    folder, base = served

    def rows(data: str, out: Path, checkpoint: str = "none", cache: list[str] | None = None) -> list[dict]:
        _run(capsys, ["eval", "zeroshot", "--model", "FGCLEP-Tiny", "--checkpoint", checkpoint, "--task",
                      "ludb-rhythm", "--ludb-data", data, *(cache or ["--no-cache"]), "--bootstrap", "20",
                      "--quiet", "--out", str(out)])  # fmt: skip
        return json.loads((out / "results.json").read_text())["rows"]

    remote, local = rows(base, tmp_path / "remote"), rows(str(folder), tmp_path / "local")
    assert len(remote) == len(local) > 0
    assert remote == local
    # the embedding cache of remote shards is keyed by URL + the size and Last-Modified the server reports
    ((url, size, validators),) = shard_files(f"{base}/ludb-test-000000.tar")
    assert url == f"{base}/ludb-test-000000.tar" and "Last-Modified" in validators
    assert size == (folder / "ludb-test-000000.tar").stat().st_size
    cache = tmp_path / "cache"
    first = rows(base, tmp_path / "c1", ckpt, ["--cache", str(cache)])
    (entry,) = cache.glob("ludb-test-000000-*.npz")
    stamp = entry.stat().st_mtime_ns
    clear_memo()
    assert rows(base, tmp_path / "c2", ckpt, ["--cache", str(cache)]) == first  # read from the cache
    assert entry.stat().st_mtime_ns == stamp and list(cache.iterdir()) == [entry]
    assert first == rows(str(folder), tmp_path / "c3", ckpt)


def test_augment_on_http_equals_local(served, capsys, tmp_path, ckpt):
    folder, base = served

    def augment(data: str, name: str) -> tuple[list[dict], dict]:
        cache = tmp_path / name / "cands"
        _run(
            capsys,
            ["features", "generate", "--data", data, "--cache", str(cache), "--backend", "kb", "--quiet"],
        )
        out = tmp_path / name / "aug"
        _run(capsys, ["augment", "--data", data, "--out", str(out / "a-%06d.tar"), "--cache", str(cache),
                      "--model", "FGCLEP-Tiny", "--checkpoint", ckpt, "--quiet",
                      "--summary-json", str(tmp_path / name / "summary.json")])  # fmt: skip
        samples = [
            {k: v for k, v in r.items() if k != "__url__"}
            for r in iter_raw(str(out / "a-{000000..000002}.tar"))
        ]
        return samples, json.loads((tmp_path / name / "summary.json").read_text())

    remote, local = augment(f"{base}/{SMALL}", "remote"), augment(str(folder / SMALL), "local")
    assert [s["__key__"] for s in remote[0]] == [s["__key__"] for s in local[0]] and len(local[0]) == 12
    assert remote[0] == local[0]
    where = {"urls", "rejects_file", "seconds"}  # the output folder and the wall time differ, nothing else
    assert {k: v for k, v in remote[1].items() if k not in where} == {
        k: v for k, v in local[1].items() if k not in where
    }
    assert remote[1]["samples"] == 12 and remote[1]["kept_per_report"] > 0  # reports were rewritten


def test_augment_over_http_with_a_missing_shard_is_one_error_line(served, capsys, tmp_path, ckpt):
    """The set's second shard is not on the server: augment stops before any work (no model loaded, nothing
    written) with one line naming that URL and exit status 1, not a traceback."""
    _, base = served
    capsys.readouterr()
    out = tmp_path / "aug"
    rc = main(["augment", "--data", f"{base}/small/s-{{000002..000003}}.tar", "--out", str(out / "a-%06d.tar"),
               "--cache", str(tmp_path / "cands"), "--model", "FGCLEP-Tiny", "--checkpoint", ckpt, "--quiet"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and err[0].startswith("fgclep augment: error:"), err
    assert f"{base}/small/s-000003.tar" in err[0] and "s-000002" not in err[0]
    assert "Traceback" not in err[0] and not out.exists()


def test_file_urls_read_the_local_files(served):
    folder, _ = served
    want = [r["__key__"] for r in iter_raw(str(folder / SMALL))]
    for url in (f"file:{folder / SMALL}", f"file://{folder / SMALL}"):
        assert [r["__key__"] for r in iter_raw(url)] == want
        assert read_sizes(url) == 12


def test_missing_fsspec_package_is_one_error_line(monkeypatch, capsys):
    from fsspec.registry import _registry  # protocol -> class of the filesystems already imported

    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if s3fs were not installed
    monkeypatch.delitem(_registry, "s3", raising=False)
    with (
        pytest.raises(MissingFilesystem, match=r"s3://bucket/x-000000.tar: .*pip install s3fs"),
        open_url("s3://bucket/x-000000.tar"),
    ):
        pass
    capsys.readouterr()
    assert main(["info", "s3://bucket/x-{000000..000001}.tar"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "s3://bucket/x-000000.tar" in err[0] and "pip install s3fs" in err[0]
