"""HTTP for the OpenAI-compatible backend (httpx2): one JSON request, its failure told plainly, retry waits.

:class:`JsonClient` makes one try and raises :class:`RequestFailed`, marked transient (HTTP 408, 429, 5xx, no
connection, a dropped reply) or not, with the server's ``Retry-After``; the caller decides whether and when
to try again (:func:`backoff`). A reply is a JSON object or a failure: HTML, bad UTF-8, 5000-digit numbers and
deep nesting are failed requests, never exceptions of another kind. httpx2 is imported when a client is
built, so environments without it (the vLLM one) still run the other backends.
"""

from __future__ import annotations

import email.utils
import json
import math
import random
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx2

ERROR_CHARS = 200  # the server's error message is cut to this in warnings
CONNECT_TIMEOUT = 30.0  # seconds to open a connection (the read timeout is the backend's, for long answers)


class RequestFailed(RuntimeError):
    """A request without a usable reply; a ``transient`` one (busy or unreachable server) may work later."""

    def __init__(self, message: str, transient: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.transient, self.retry_after = transient, retry_after


def transient_status(status: int) -> bool:
    """Whether an HTTP error status may pass on its own: 408 (timeout), 429 (rate limit), any 5xx."""
    return status in (408, 429) or status >= 500


def server_message(body: bytes, limit: int = ERROR_CHARS) -> str:
    """The message of an error reply: OpenAI's ``error.message``, vLLM's ``message``, FastAPI's ``detail``, or
    else the body's start; printable characters on one line, at most ``limit`` of them."""
    text = body[:65536].decode("utf-8", "replace")
    try:
        reply = json.loads(text)
    except (ValueError, RecursionError):
        reply = None
    if isinstance(reply, dict):
        error = reply.get("error")
        candidates = (error.get("message") if isinstance(error, dict) else error, reply.get("message"))
        text = next((c for c in (*candidates, reply.get("detail")) if isinstance(c, str) and c.strip()), text)
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split()) or "(empty body)"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (a number of seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, OverflowError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def backoff(
    retry: int, after: float | None = None, base: float = 1.0, cap: float = 60.0, rng: Any = random
) -> float:
    """Seconds to wait before retry number ``retry`` (from 0): the server's Retry-After (``after``) if it
    gave one, else exponential backoff with jitter, uniform in [d/2, d] for d = base * 2**retry; at most
    ``cap``."""
    if after is not None:
        return min(cap, after)
    d = min(cap, base * 2.0**retry)
    return d / 2 + rng.uniform(0, d / 2)


def json_object(body: bytes, url: str) -> dict:
    """The reply ``body`` as a JSON object, or RequestFailed naming ``url`` and what the body is instead."""
    try:
        reply = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # HTML, bad UTF-8, 5000-digit numbers, deep nesting
        start = body[:60].decode("utf-8", "replace")
        raise RequestFailed(f"{url}: the reply is not JSON ({type(e).__name__}; starts {start!r})") from None
    if not isinstance(reply, dict):
        raise RequestFailed(f"{url}: the reply is a JSON {type(reply).__name__}, not an object")
    return reply


class JsonClient:
    """JSON requests to ``base_url`` over a pool of at most ``connections`` connections (thread-safe)."""

    def __init__(
        self, base_url: str, api_key: str = "", timeout: float = 600.0, connections: int = 4
    ) -> None:
        import httpx2

        self.httpx, self.base_url, self.timeout = httpx2, base_url, timeout
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        limits = self.httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self.http = self.httpx.Client(headers=headers, limits=limits, timeout=self._timeout(timeout))

    def _timeout(self, seconds: float) -> httpx2.Timeout:
        return self.httpx.Timeout(seconds, connect=min(seconds, CONNECT_TIMEOUT))

    def request(self, method: str, path: str, body: dict | None = None, timeout: float | None = None) -> dict:
        """One try: the reply object, or :class:`RequestFailed` (no retry here)."""
        url = self.base_url + path
        content = None if body is None else json.dumps(body).encode()
        try:
            r = self.http.request(
                method, url, content=content, timeout=self._timeout(timeout or self.timeout)
            )
        except (self.httpx.ConnectError, self.httpx.ConnectTimeout) as e:
            raise RequestFailed(f"cannot reach the server at {url}: {e}", transient=True) from None
        except self.httpx.TransportError as e:  # a dropped connection, a read timeout
            raise RequestFailed(f"{url}: {type(e).__name__}: {e}", transient=True) from None
        if not 200 <= r.status_code < 300:
            raise RequestFailed(
                f"{url}: HTTP {r.status_code}: {server_message(r.content)}",
                transient=transient_status(r.status_code),
                retry_after=retry_after(r.headers.get("Retry-After")),
            )
        return json_object(r.content, url)

    def close(self) -> None:
        """Close the connections."""
        self.http.close()
