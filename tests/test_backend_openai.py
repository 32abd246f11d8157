"""The OpenAI-compatible backend against a scripted local server: retries with backoff on 429 / 5xx /
connection errors (Retry-After honoured), bounded concurrency, results in input order, the server's error
named.

The waits are recorded by a patched ``OpenAIBackend.sleep``: no test really sleeps for a retry.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fgclep_plugin.augment.backends import SERVER_DOWN, OpenAIBackend
from fgclep_plugin.augment.openai_http import ERROR_CHARS, backoff, retry_after, server_message


class Script:
    """What the server sends: the scripted replies (status, headers, JSON body) first, then an answer that
    echoes the report; counts requests and the most in flight at once."""

    def __init__(self, replies: list[tuple[int, dict, object]] | None = None, delay: float = 0.0) -> None:
        self.replies, self.delay = list(replies or []), delay
        self.lock = threading.Lock()
        self.requests = self.in_flight = self.max_in_flight = 0

    def reply(self, body: dict) -> tuple[int, dict, object]:
        with self.lock:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            scripted = self.replies.pop(0) if self.replies else None
        try:
            time.sleep(self.delay)
        finally:
            with self.lock:
                self.in_flight -= 1
        if scripted is not None:
            return scripted
        report = body["messages"][-1]["content"].split("Report: ")[1].split("\n")[0]
        return 200, {}, {"choices": [{"finish_reason": "stop", "message": {"content": json.dumps([report])}}]}


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    """(base URL, script) of a threading server on 127.0.0.1; set ``script.replies`` / ``delay`` per test."""
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status, headers, payload = script.reply(body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            for k, v in {"Content-Type": "application/json", **headers}.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", script
    finally:
        httpd.shutdown()
        httpd.server_close()


def _backend(url: str, waits: list[float], **kw) -> OpenAIBackend:
    backend = OpenAIBackend("m", url, **kw)
    backend.sleep = waits.append  # record the waits instead of sleeping
    return backend


def test_429_with_retry_after_is_waited_out(server):
    url, script = server
    busy = (429, {"Retry-After": "2"}, {"error": {"message": "rate limit reached", "type": "rate_limit"}})
    script.replies = [busy, busy]
    waits: list[float] = []
    backend = _backend(url, waits)
    with pytest.warns(UserWarning) as record:
        assert backend.propose(["atrial fibrillation."]) == [["atrial fibrillation"]]
    notices = [str(w.message) for w in record]
    assert len(notices) == 2 and all("report 'atrial fibrillation.'" in m for m in notices)
    assert notices[1].endswith("HTTP 429: rate limit reached; retry 2 of 4 in 2.0 s")
    assert waits == [2.0, 2.0] and script.requests == 3
    assert backend.failures == 1 and backend.failed == 0 and not backend.errors


def test_retry_after_is_capped_and_read_as_an_http_date():
    assert retry_after("120") == 120.0 and backoff(0, 120.0, cap=60.0) == 60.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: no wait
    assert retry_after("soon") is None and retry_after(None) is None and retry_after("nan") is None


def test_503_then_200_waits_with_backoff_and_jitter(server):
    url, script = server
    script.replies = [(503, {}, {"object": "error", "message": "engine overloaded", "code": 503})]
    waits: list[float] = []
    backend = _backend(url, waits, backoff_base=1.0)
    with pytest.warns(UserWarning, match="HTTP 503: engine overloaded"):
        assert backend.complete(["left bundle branch block."]) == ['["left bundle branch block."]']
    assert len(waits) == 1 and 0.5 <= waits[0] <= 1.0


def test_backoff_doubles_with_jitter_up_to_the_cap():
    for retry in range(8):
        d = min(60.0, 2.0**retry)
        assert all(d / 2 <= backoff(retry) <= d for _ in range(20))
    assert len({backoff(3) for _ in range(20)}) > 1  # jittered


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused_is_a_recorded_failure_naming_the_report():
    waits: list[float] = []
    backend = _backend(f"http://127.0.0.1:{_closed_port()}", waits, max_retries=3)
    with pytest.warns(UserWarning) as record:
        assert backend.complete(["sinus bradycardia."]) == [None]
    assert len(waits) == 3 and all(d / 2 <= w <= d for w, d in zip(waits, (1, 2, 4)))  # exponential, jittered
    final = str(record[-1].message)
    assert (
        "report 'sinus bradycardia.'" in final and "(4 tries)" in final and "cannot reach the server" in final
    )
    assert backend.errors["sinus bradycardia."].startswith("cannot reach the server at http://127.0.0.1:")
    assert backend.failures == backend.failed == 1


def test_a_server_that_looks_down_is_not_waited_for_until_it_answers(server):
    url, script = server
    script.replies = [(503, {}, {"message": "down"})] * (3 * SERVER_DOWN + 1)  # 3 tries per report
    waits: list[float] = []
    backend = _backend(url, waits, concurrency=1, max_retries=2)
    reports = [f"report {i}." for i in range(SERVER_DOWN + 2)]
    with pytest.warns(UserWarning) as record:
        out = backend.complete(reports)
    assert out[:-1] == [None] * (SERVER_DOWN + 1) and out[-1] == json.dumps([reports[-1]])
    assert len(waits) == 2 * SERVER_DOWN and script.requests == 3 * SERVER_DOWN + 2  # then one try each
    assert sum("the server looks down" in str(w.message) for w in record) == 1
    assert backend.lost_in_a_row == 0  # the answer closes the outage


def test_server_error_is_named_with_status_and_message(server):
    url, script = server
    long = "model 'm' does not exist " + "x" * 1000
    script.replies = [(404, {}, {"error": {"message": long, "code": 404}})] * 2
    waits: list[float] = []
    backend = _backend(url, waits)
    with pytest.warns(UserWarning) as record:
        assert backend.complete(["sinus rhythm."]) == [None]
    assert waits == [0.0] and script.requests == 2  # not transient: retried once, at once
    final = str(record[-1].message)
    assert "report 'sinus rhythm.'" in final and "HTTP 404: model 'm' does not exist" in final
    assert "x" * ERROR_CHARS not in final and final.endswith("...")  # the server's message is cut


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error": {"message": "bad\\nrequest\\u001b[31m"}}', "bad request [31m"),  # OpenAI
        (b'{"object": "error", "message": "too long"}', "too long"),  # vLLM
        (b'{"detail": "Not Found"}', "Not Found"),  # FastAPI
        (b'{"error": "grammar rejected tokens"}', "grammar rejected tokens"),
        (b"<html>502 Bad Gateway</html>", "<html>502 Bad Gateway</html>"),
        (b"\xff\xfe", "\ufffd\ufffd"),
        (b"", "(empty body)"),
    ],
)
def test_server_message(body, message):
    assert server_message(body) == message


def test_concurrency_is_bounded_and_answers_keep_the_input_order(server):
    url, script = server
    script.delay = 0.15
    reports = [f"report {i}." for i in range(12)]
    backend = _backend(url, [], concurrency=4)
    assert backend.complete(reports) == [json.dumps([r]) for r in reports]
    assert 1 < script.max_in_flight <= 4 and script.requests == 12


def test_cli_concurrency_reaches_the_backend():
    import argparse

    from fgclep_plugin.augment import generate

    parser = argparse.ArgumentParser()
    generate.add_cli(parser.add_subparsers(dest="command"), argparse.HelpFormatter)
    base = ["features", "generate", "--data", "x", "--cache", "c", "--backend", "openai", "--base-url", "u"]
    assert generate._engine_options(parser.parse_args(base))["concurrency"] == 4
    args = parser.parse_args([*base, "--concurrency", "7"])
    assert generate._engine_options(args)["concurrency"] == 7
