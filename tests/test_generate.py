"""Stage-2 candidate generation without vLLM: parsing, the cache, resume, partition, fault answers, backends."""

from __future__ import annotations

import io
import json
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from fgclep_plugin.augment.backends import Backend, KnowledgeBackend, OpenAIBackend
from fgclep_plugin.augment.cache import CandidateCache, iter_entries, load_candidates, part_name
from fgclep_plugin.augment.generate import generate, part_of, process_index, read_reports
from fgclep_plugin.augment.text import (
    PROMPT_VERSION,
    QUESTION,
    answer_schema,
    build_messages,
    normalise_feature,
    normalise_report,
    parse_answer,
    report_key,
)

REPORTS = [
    "Sinus rhythm. Normal ECG.",
    "sinus rhythm.  normal ecg",  # same report once normalised
    "Atrial fibrillation.",
    "Left bundle branch block",
    "Sinus bradycardia. First degree AV block.",
    "Sinus tachycardia. Left axis deviation.",
    "Inferior myocardial infarction, age undetermined.",
    "Sinus rhythm. Prolonged QT.",
]


def write_report_shard(path: Path, reports: list[str], prefix: str = "s", corrupt_tail: bool = False) -> Path:
    """A WebDataset shard with one sample (zero ECG, report, meta) per report."""
    buf = io.BytesIO()
    np.save(buf, np.zeros((12, 5000), np.float16))
    with tarfile.open(path, "w") as tar:
        for i, r in enumerate(reports):
            for ext, data in (("npy", buf.getvalue()), ("txt", r.encode()), ("json", b"{}")):
                info = tarfile.TarInfo(f"{prefix}{i:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    if corrupt_tail:  # cut inside the last sample's ECG member (a copy interrupted mid-shard)
        with open(path, "r+b") as f:
            f.truncate(int(path.stat().st_size * 0.75))
    return path


class CountingBackend(Backend):
    """Answers every report with its words as features; counts the prompts it is sent."""

    name = "counting"

    def __init__(self, answers: dict[str, str | None] | None = None, stop_after: int | None = None):
        super().__init__("test-model")
        self.answers = answers or {}
        self.calls: list[str] = []
        self.stop_after = stop_after

    def _attempt(self, reports):
        out = []
        for r in reports:
            if self.stop_after is not None and len(self.calls) >= self.stop_after:
                raise KeyboardInterrupt  # the run is killed mid-batch
            self.calls.append(r)
            out.append(self.answers.get(r, json.dumps(r.rstrip(".").split(". ")[:3])))
        return out


@pytest.mark.parametrize(
    ("raw", "features", "status"),
    [
        ('["Prolonged PR interval", "ST elevation"]', ["prolonged pr interval", "st elevation"], "ok"),
        ('```json\n["Long PR", "long pr."]\n```\nThese are typical.', ["long pr"], "ok"),
        ('Sure! ["Wide QRS", 3, null, {"a": 1}] I hope this helps [', ["wide qrs"], "ok"),
        ("['tall T waves', 'tall t waves', 'Q waves']", ["tall t waves", "q waves"], "ok"),
        ('{"features": ["1. Left axis deviation"]}', ["left axis deviation"], "ok"),
        ('The list [1, 2] then ["delta wave"]', ["delta wave"], "ok"),
        ('["st\x04 elevation"]', ["st elevation"], "ok"),  # raw control character (a grammar allowed it)
        ("[]", [], "empty"),
        ("   ", [], "empty"),
        ("[1, 2, 3]", [], "empty"),
        ("garbage without a list", [], "unparsable"),
        ('["unterminated', [], "unparsable"),
        ('__import__("os").system("touch pwned")', [], "unparsable"),
    ],
)
def test_parse_answer(raw, features, status):
    assert parse_answer(raw) == (features, status)


def test_parse_answer_caps_long_items_and_counts():
    long = "st depression " * 20
    features, status = parse_answer(json.dumps([long] + [f"feature {i}" for i in range(30)]), max_features=5)
    assert status == "ok" and len(features) == 5
    assert (
        len(features[0]) <= 80
        and features[0].startswith("st depression st")
        and not features[0].endswith(" ")
    )


def test_literal_eval_is_never_eval(tmp_path):
    marker = tmp_path / "pwned"
    raw = f"[__import__('pathlib').Path({str(marker)!r}).touch()]"
    assert parse_answer(raw) == ([], "unparsable")
    assert not marker.exists()


def test_normalisation():
    assert normalise_report("  Sinus rhythm .  Normal ECG!! ") == "sinus rhythm. normal ecg."
    assert report_key("Sinus rhythm. Normal ECG") == report_key("sinus   rhythm. normal ecg.")
    assert normalise_report("") == "" and len(report_key("x")) == 64
    assert normalise_feature("2) \u2022 'Prolonged  QT interval.'") == "prolonged qt interval"
    assert normalise_feature("1.5 mm ST elevation") == "1.5 mm st elevation"
    assert normalise_feature(" - . ") is None and normalise_feature("\x00\x04") is None


def test_prompt_is_the_papers_question():
    messages = build_messages("atrial fibrillation.")
    assert QUESTION in messages[-1]["content"] and "atrial fibrillation." in messages[-1]["content"]
    schema = answer_schema(4, 30)
    assert schema["maxItems"] == 4 and schema["items"]["maxLength"] == 30


def test_shards_read_reports_only_and_survive_a_corrupt_tail(tmp_path):
    good = write_report_shard(tmp_path / "a-000000.tar", REPORTS)
    write_report_shard(
        tmp_path / "a-000001.tar", ["Sinus arrhythmia.", "Sinus arrest.", "Junctional rhythm."], "b", True
    )
    n, reports = read_reports(str(good))
    assert n == len(REPORTS) and len(reports) == len(REPORTS) - 1
    assert set(reports.values()) == {normalise_report(r) for r in REPORTS}
    with pytest.warns(UserWarning, match="a-000001.tar: read stopped early"):
        n2, reports2 = read_reports(f"{tmp_path}/a-{{000000..000001}}.tar")
    # the cut is inside the third sample: the two complete samples before it are read (was one: a lost sample)
    assert n2 == n + 2 and {normalise_report("Sinus arrhythmia."), normalise_report("Sinus arrest.")} <= set(
        reports2.values()
    )
    assert normalise_report("Junctional rhythm.") not in reports2.values()
    with pytest.raises(FileNotFoundError, match="a-000009.tar"):
        read_reports(str(tmp_path / "a-000009.tar"))


def test_rerun_makes_zero_calls_and_other_shard_sets_reuse_the_cache(tmp_path):
    _, reports = read_reports(str(write_report_shard(tmp_path / "a-000000.tar", REPORTS)))
    first = CountingBackend()
    s1 = generate(reports, first, tmp_path / "cache", progress=False)
    assert len(first.calls) == s1["calls_made"] == len(reports) == 7 and s1["cached"] == 0
    assert sorted(first.calls) == sorted(reports.values())  # one prompt per unique normalised report
    again = CountingBackend()
    s2 = generate(reports, again, tmp_path / "cache", progress=False)
    assert again.calls == [] and s2["calls_made"] == 0 and s2["cached"] == 7
    # another shard set sharing two reports: only the new one is asked
    _, other = read_reports(
        str(write_report_shard(tmp_path / "b-000000.tar", [REPORTS[2], REPORTS[3], "Sinus arrest."]))
    )
    third = CountingBackend()
    generate(other, third, tmp_path / "cache", progress=False)
    assert third.calls == ["sinus arrest."]
    cands = load_candidates(tmp_path / "cache", "counting", "test-model", PROMPT_VERSION)
    assert cands[report_key("Atrial fibrillation")] == ["atrial fibrillation"]
    assert cands[report_key("sinus tachycardia. left axis deviation.")] == [
        "sinus tachycardia",
        "left axis deviation",
    ]
    assert load_candidates(tmp_path / "cache", "counting", "other-model", PROMPT_VERSION) == {}


def test_killed_run_resumes_without_duplicates_or_losses(tmp_path):
    _, reports = read_reports(str(write_report_shard(tmp_path / "a-000000.tar", REPORTS)))
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        generate(reports, CountingBackend(stop_after=5), cache, batch_size=2, progress=False)
    part = cache / part_name(0, 1)
    assert len(part.read_text().splitlines()) == 4  # two full batches were appended before the kill
    with open(part, "ab") as f:  # a kill in the middle of writing a line
        f.write(b'{"key": "abc", "backend": "counting", "model": "te')
    assert len(load_candidates(cache, "counting", "test-model", PROMPT_VERSION)) == 4  # partial line ignored
    resumed = CountingBackend()
    with pytest.warns(UserWarning, match="dropped a partial last line"):
        s = generate(reports, resumed, cache, batch_size=2, progress=False)
    assert s["cached"] == 4 and len(resumed.calls) == 3
    lines = [json.loads(line) for line in part.read_text().splitlines()]
    assert sorted(e["key"] for e in lines) == sorted(reports)  # every report once, nothing glued or lost


def test_partition_covers_every_report_exactly_once(tmp_path, monkeypatch):
    reports = {report_key(f"report {i}"): f"report {i}." for i in range(200)}
    cache = tmp_path / "cache"
    asked: list[str] = []
    for i in range(3):
        b = CountingBackend()
        generate(reports, b, cache, index=i, num_parts=3, progress=False)
        asked += b.calls
        assert (cache / part_name(i, 3)).is_file()
    assert sorted(asked) == sorted(reports.values())
    sizes = [sum(part_of(k, 3) == i for k in reports) for i in range(3)]
    assert min(sizes) > 40  # a real split, not all in one part
    assert len(list(iter_entries(cache))) == 200
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert process_index() == (2, 4) and process_index(2, 1) == (1, 2)
    with pytest.raises(ValueError, match="shard-index"):
        process_index(2, 2)
    monkeypatch.setenv("RANK", "4")  # the launcher's variables are checked as model.device checks them
    with pytest.raises(ValueError, match=r"RANK 4 is not in \[0, WORLD_SIZE 4\)"):
        process_index()


def test_garbage_and_failed_answers(tmp_path):
    reports = {report_key(r): normalise_report(r) for r in REPORTS[2:6]}
    af, lbbb, brady, tachy = reports.values()

    class Flaky(CountingBackend):
        tries: ClassVar[dict[str, int]] = {}

        def _attempt(self, batch):
            out = super()._attempt(batch)
            for i, r in enumerate(batch):
                self.tries[r] = self.tries.get(r, 0) + 1
                if r == brady and self.tries[r] == 1:
                    out[i] = None  # a grammar abort, answered on the retry
                if r == tachy:
                    out[i] = None  # fails twice
            return out

    backend = Flaky(answers={af: "I cannot answer that.", lbbb: ""})
    with pytest.warns(UserWarning) as record:
        s = generate(reports, backend, tmp_path / "cache", progress=False)
    messages = " ".join(str(w.message) for w in record)
    assert "atrial fibrillation." in messages and "unparsable" in messages and "left bundle" in messages
    assert "the request failed twice" in messages
    assert s["status"] == {"unparsable": 1, "empty": 1, "ok": 1, "error": 1}
    assert s["retries"] == 2 and s["failures"] == 1
    cands = load_candidates(tmp_path / "cache", "counting", "test-model", PROMPT_VERSION)
    assert cands[report_key(af)] == [] and cands[report_key(lbbb)] == [] and report_key(tachy) not in cands
    again = CountingBackend()
    generate(reports, again, tmp_path / "cache", progress=False)
    assert again.calls == [tachy]  # only the failed request is asked again


def test_one_writer_per_part(tmp_path):
    with CandidateCache(tmp_path, "b", "m", "v", 0, 2):
        with pytest.raises(RuntimeError, match="another process"):
            CandidateCache(tmp_path, "b", "m", "v", 0, 2)
        CandidateCache(tmp_path, "b", "m", "v", 1, 2).close()


def test_kb_backend_wraps_a_propose_function(tmp_path):
    table = {"atrial fibrillation.": ["Absent P waves", "irregular RR intervals"]}
    kb = KnowledgeBackend(propose_fn=lambda r: table.get(r, []))
    assert kb.propose(["atrial fibrillation.", "normal ecg."]) == [
        ["absent p waves", "irregular rr intervals"],
        [],
    ]
    many = KnowledgeBackend(propose_fn=lambda r: [f"feature {i}" for i in range(25)])
    assert len(many.propose(["x."])[0]) == 25  # not cut to the LLM answer cap


class _Handler(BaseHTTPRequestHandler):
    bodies: ClassVar[list[dict]] = []
    fail_first = True

    def log_message(self, *args):
        pass

    def _send(self, code, payload):
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(200, {"data": [{"id": "served-model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        if type(self).fail_first:
            type(self).fail_first = False
            self._send(500, {"error": "grammar rejected tokens"})
            return
        report = body["messages"][-1]["content"].split("Report: ")[1].split("\n")[0]
        self._send(
            200, {"choices": [{"finish_reason": "stop", "message": {"content": json.dumps([report])}}]}
        )


def test_openai_backend_request_and_retry():
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        backend = OpenAIBackend(None, f"http://127.0.0.1:{server.server_port}", concurrency=1, max_features=3)
        backend.sleep = lambda seconds: None  # the backoff before the retry (tests/test_backend_openai.py)
        assert backend.model == "served-model"
        with pytest.warns(UserWarning, match="HTTP 500"):
            assert backend.propose(["atrial fibrillation.", "left bundle branch block."]) == [
                ["atrial fibrillation"],
                ["left bundle branch block"],
            ]
        assert backend.failures == 1 and backend.failed == 0
        body = _Handler.bodies[-1]
        assert body["temperature"] == 0 and body["model"] == "served-model"
        assert body["response_format"]["json_schema"]["schema"] == answer_schema(3)
    finally:
        server.shutdown()


def test_unreachable_server_is_a_clear_error():
    with pytest.raises(RuntimeError, match="cannot reach the server at http://127.0.0.1:9/v1/models"):
        OpenAIBackend(None, "http://127.0.0.1:9")


def test_transformers_backend_on_a_tiny_local_llama(tmp_path, tmp_path_factory):
    from llm_helpers import build_tiny_llama

    from fgclep_plugin.augment.backends import TransformersBackend

    model = build_tiny_llama(tmp_path_factory.getbasetemp() / "tiny-llama")  # shared with the vLLM tests
    backend = TransformersBackend(str(model), max_tokens=6, batch_size=2)
    texts = backend.complete(
        ["atrial fibrillation.", "sinus rhythm. normal ecg.", "left bundle branch block."]
    )
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    s = generate(
        {report_key(t): t for t in ["atrial fibrillation."]}, backend, tmp_path / "c", progress=False
    )
    assert s["calls_made"] == 1 and s["status"].keys() <= {"ok", "empty", "unparsable"}


def test_cli_with_kb_backend(tmp_path, capsys):
    pytest.importorskip("fgclep_plugin.augment.knowledge", reason="knowledge base not in this checkout yet")
    from fgclep_plugin.cli import main

    shard = write_report_shard(tmp_path / "a-000000.tar", REPORTS)
    argv = [
        "features",
        "generate",
        "--data",
        str(shard),
        "--cache",
        str(tmp_path / "cache"),
        "--backend",
        "kb",
    ]
    assert main([*argv, "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["samples"] == 8 and summary["unique_reports"] == 7 and summary["calls_made"] == 7
    assert main([*argv, "--quiet"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["calls_made"] == 0 and "0 LLM calls made, 7 cached" in out.err
    assert main([*argv[:-2], "--backend", "openai"]) == 1
    assert "--backend openai needs --base-url" in capsys.readouterr().err


def test_generation_imports_neither_open_clip_nor_torch():
    import subprocess
    import sys

    code = (
        "import sys, fgclep_plugin.augment.generate, fgclep_plugin.augment.backends, fgclep_plugin.ecgdata.reader;"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'open_clip', 'torch', 'torchvision', 'vllm'});"
        "assert not bad, bad"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr


SLOW_RUN = """
import sys, time
sys.path.insert(0, {tests!r})
from test_generate import CountingBackend
from fgclep_plugin.augment.generate import generate, read_reports

class Slow(CountingBackend):
    def _attempt(self, reports):
        time.sleep(0.3)
        return super()._attempt(reports)

_, reports = read_reports({shard!r})
generate(reports, Slow(), {cache!r}, batch_size=1, progress=False)
"""


def test_sigkilled_run_resumes(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    shard = write_report_shard(tmp_path / "a-000000.tar", REPORTS)
    cache = tmp_path / "cache"
    code = SLOW_RUN.format(tests=str(Path(__file__).parent), shard=str(shard), cache=str(cache))
    proc = subprocess.Popen([sys.executable, "-c", code])
    part = cache / part_name(0, 1)
    deadline = time.time() + 120
    while not (part.is_file() and len(part.read_bytes().splitlines()) >= 2):
        assert proc.poll() is None and time.time() < deadline, "the slow run ended before it was killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(load_candidates(cache, "counting", "test-model", PROMPT_VERSION))
    assert 2 <= done < 7
    _, reports = read_reports(str(shard))
    resumed = CountingBackend()
    generate(reports, resumed, cache, progress=False)
    assert len(resumed.calls) == 7 - done
    keys = [json.loads(line)["key"] for line in part.read_text().splitlines()]
    assert sorted(keys) == sorted(reports)
