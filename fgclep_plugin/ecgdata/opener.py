"""One opener for every shard reader: local paths, ``file:``, ``pipe:`` and fsspec URLs.

A URL with ``://`` (``http(s)://``, ``s3://``, ``gs://``, ``hf://``, ...) is opened through :mod:`fsspec`, whose
protocol packages (``s3fs``, ``gcsfs``, ``huggingface_hub``, ``aiohttp``) the user installs as needed; without
one, :class:`MissingFilesystem` names the URL and the package. Anything else is a local path, opened as it
always was. Chained fsspec URLs (``simplecache::s3://...``) are not supported: ``::`` joins shard sets.
"""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO
from urllib.parse import urlparse
from urllib.request import url2pathname


class MissingFilesystem(ImportError, RuntimeError):
    """A URL whose fsspec protocol needs a package this environment lacks (a RuntimeError too: the ``fgclep``
    command prints it as one error line)."""


def local_path(url: str) -> str | None:
    """The local file ``url`` names (a path, or a ``file:`` URL as webdataset reads it); None for ``pipe:``
    commands and remote URLs."""
    if url.startswith("file:"):
        return url2pathname(urlparse(url).path)
    if url.startswith("pipe:") or "://" in url:
        return None
    return url


def _missing_package(scheme: str, err: ImportError) -> str:
    """The package fsspec failed to import for ``scheme`` (its import error, else the registry's class)."""
    from fsspec.registry import known_implementations

    cause = err.__cause__ if isinstance(err.__cause__, ImportError) else err
    if cause.name:
        return cause.name.split(".")[0]
    return known_implementations.get(scheme, {}).get("class", f"an fsspec {scheme} filesystem").split(".")[0]


class _RawStream(io.RawIOBase):
    """An fsspec file as a raw stream, so :class:`io.BufferedReader` makes its ``read(n)`` return ``n`` bytes
    unless the stream ends (an HTTP stream returns what has arrived). A failure of the transport (a connection
    cut mid-shard) is an ``OSError`` naming the URL, like a local read error."""

    def __init__(self, f: BinaryIO, url: str):
        super().__init__()
        self.f, self.url = f, url

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        try:
            data = self.f.read(len(b))
        except (OSError, ValueError):
            raise
        except Exception as e:  # e.g. aiohttp's ClientPayloadError: the body ended before its length
            raise OSError(f"{self.url}: read failed: {e}") from e
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self.f.close()
        super().close()


def _open_remote(url: str) -> BinaryIO:
    """``url`` opened with fsspec; HTTP is streamed (no range requests: any server, one pass over the tar)."""
    import fsspec

    scheme = url.split("://", 1)[0]
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except ImportError as e:
        package = _missing_package(scheme, e)
        raise MissingFilesystem(
            f"cannot read {url}: {scheme}:// URLs need the Python package {package} (pip install {package})",
            name=package,
        ) from e
    except ValueError as e:  # fsspec: "Protocol not known"
        raise ValueError(f"cannot read {url}: no fsspec filesystem handles {scheme}:// URLs") from e
    streamed = {"block_size": 0} if "http" in fs.protocol else {}
    try:
        f = fs.open(path, "rb", **streamed)
    except FileNotFoundError as e:  # fsspec's message is the bare URL; HTTP: also an unreachable server
        raise FileNotFoundError(f"{url}: not found (or its server is not reachable)") from e
    return io.BufferedReader(_RawStream(f, url), 1 << 20)


@contextmanager
def open_url(url: str) -> Iterator[BinaryIO]:
    """A binary stream of ``url``, closed on exit.

    ``pipe:CMD`` runs ``CMD`` in a shell and reads its output; a command that exits non-zero after its output
    was read to the end raises ``OSError`` (stopping early, or an error in the body, is not checked).
    """
    if url.startswith("pipe:"):
        proc = subprocess.Popen(url[5:], shell=True, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        try:
            yield proc.stdout
        finally:
            proc.stdout.close()
            proc.wait()
        if proc.returncode != 0:  # e.g. the download failed: not 0 samples
            raise OSError(f"{url}: command exited with status {proc.returncode}")
        return
    path = local_path(url)
    with open(path, "rb") if path is not None else _open_remote(url) as stream:
        yield stream


def read_optional(url: str) -> bytes | None:
    """The bytes at ``url``; None when nothing is there (a ``pipe:`` command is not run to find out)."""
    if url.startswith("pipe:"):
        return None
    path = local_path(url)
    if path is not None:
        if not os.path.isfile(path):
            return None
        with open(path, "rb") as f:
            return f.read()
    try:
        with open_url(url) as f:
            return f.read()
    except FileNotFoundError:
        return None
