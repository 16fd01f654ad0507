"""Opening shards that live elsewhere, with timeouts, bounded retries and named failures.

``http(s)://`` URLs are read with ``http.client`` (a connect timeout, then a read timeout on every
socket read: a server that stalls mid-shard costs at most ``read_timeout``); ``pipe:CMD`` runs
``CMD`` (``pipe:aws s3 cp s3://b/x.tar -``, ``pipe:gcloud storage cat gs://b/x.tar``, ...) and kills
it when no byte arrives for ``read_timeout``; anything else goes to webdataset's ``gopen`` (local
paths and its other schemes). Failures raise :class:`ShardReadError` with a ``reason`` the stream
counts under (``timeout``, ``http_error``, ``truncated``, ``connection``, ``pipe_error``).
Opening is retried ``retries`` times with exponential backoff; a failure after bytes were read is
not (the shard's first samples were already used), the rest of that shard is skipped and counted.
"""

from __future__ import annotations

import http.client
import io
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import webdataset as wds

from ls_video.errors import UnreachableError, UsageError


class ShardReadError(UnreachableError):
    """A shard could not be (fully) read; ``reason`` names why."""

    def __init__(self, reason: str, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.reason, self.retryable = reason, retryable


@dataclass
class RemoteOptions:
    """Timeouts (seconds) and retries for remote shards."""

    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retries: int = 2
    backoff: float = 1.0

    def __post_init__(self) -> None:
        if self.connect_timeout <= 0 or self.read_timeout <= 0 or self.retries < 0:
            raise UsageError("connect_timeout and read_timeout must be > 0 and retries >= 0")


class _HTTPStream(io.RawIOBase):
    """Body of an HTTP response; socket timeouts and early closes become :class:`ShardReadError`."""

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse, url: str) -> None:
        self.conn, self.response, self.url = conn, response, url

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            n = self.response.readinto(buffer)
        except TimeoutError as err:
            raise ShardReadError("timeout", f"{self.url}: no data for the read timeout") from err
        except http.client.IncompleteRead as err:
            raise ShardReadError("truncated", f"{self.url}: connection closed before the announced end "
                                 f"({len(err.partial)} bytes of the last read)") from err
        except (ConnectionError, http.client.HTTPException) as err:
            raise ShardReadError("truncated", f"{self.url}: {type(err).__name__}: {err}") from err
        if n == 0 and buffer and self.response.length:  # http.client returns EOF quietly when cut short
            raise ShardReadError("truncated", f"{self.url}: connection closed {self.response.length} bytes "
                                 "before the announced end")
        return n

    def close(self) -> None:
        self.conn.close()
        super().close()


def _open_http(url: str, opts: RemoteOptions, redirects: int = 5) -> io.BufferedReader:
    parts = urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname, parts.port, timeout=opts.connect_timeout)
    try:
        conn.connect()
        conn.sock.settimeout(opts.read_timeout)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", path or "/", headers={"User-Agent": "ls-video"})
        response = conn.getresponse()
    except TimeoutError as err:
        conn.close()
        raise ShardReadError("timeout", f"{url}: {err or 'timed out'}") from err
    except OSError as err:
        conn.close()
        raise ShardReadError("connection", f"{url}: {type(err).__name__}: {err}") from err
    if response.status in (301, 302, 303, 307, 308) and redirects > 0:
        location = response.getheader("Location")
        conn.close()
        return _open_http(urljoin(url, location), opts, redirects - 1)
    if response.status >= 400:
        conn.close()
        server_side = response.status >= 500  # the storage's fault (retried, counted as a network error)
        raise ShardReadError("http_5xx" if server_side else "http_error",
                             f"{url}: HTTP {response.status} {response.reason}", retryable=server_side)
    return io.BufferedReader(_HTTPStream(conn, response, url))


class _PipeStream(io.RawIOBase):
    """stdout of a shell command; killed (reason ``timeout``) when it stalls for ``read_timeout``."""

    def __init__(self, command: str, read_timeout: float) -> None:
        self.command, self.read_timeout = command, read_timeout
        self.proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, start_new_session=True)
        self.last_data = time.monotonic()
        self.timed_out = False
        self._done = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while not self._done.wait(min(1.0, self.read_timeout / 4)):
            if time.monotonic() - self.last_data > self.read_timeout and self.proc.poll() is None:
                self.timed_out = True
                self._kill()
                return

    def _kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.proc.stdout.readinto(buffer)
        self.last_data = time.monotonic()
        if n == 0:
            self._finish()
        return n

    def _finish(self) -> None:
        code = self.proc.wait()
        self._done.set()
        if self.timed_out:
            raise ShardReadError("timeout", f"pipe:{self.command}: no data for {self.read_timeout:g} s, killed")
        if code != 0:
            raise ShardReadError("pipe_error", f"pipe:{self.command}: exit status {code}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self._kill()
            self.proc.wait()
        self._done.set()
        self.proc.stdout.close()
        super().close()


def _open_once(url: str, opts: RemoteOptions):
    if url.startswith(("http://", "https://")):
        return _open_http(url, opts)
    if url.startswith("pipe:"):
        return io.BufferedReader(_PipeStream(url[len("pipe:"):], opts.read_timeout))
    return wds.gopen(url)


def open_shard(url: str, opts: RemoteOptions | None = None):
    """A readable binary stream of ``url``; retries opening with backoff, then raises :class:`ShardReadError`.

    HTTP errors below 500 (e.g. 404) are not retried: asking again gives the same answer.
    """
    opts = opts or RemoteOptions()
    for attempt in range(opts.retries + 1):
        try:
            return _open_once(url, opts)
        except ShardReadError as err:
            if attempt == opts.retries or not err.retryable:
                raise
            time.sleep(opts.backoff * 2**attempt)
    raise AssertionError("unreachable")


def tar_samples(url: str, handler, opts: RemoteOptions | None = None) -> Iterator[dict]:
    """webdataset samples (``{"__key__", ext: bytes, ...}``) of one shard, opened by :func:`open_shard`.

    ``handler(exception) -> bool`` sees every failure (the shard not opening included), as
    webdataset's handlers do; ``True`` goes on with what can still be read.
    """

    def opened() -> Iterator[dict]:
        try:
            yield {"url": url, "stream": open_shard(url, opts)}
        except ShardReadError as err:
            handler(err)

    files = wds.tariterators.tar_file_expander(opened(), handler=handler)
    return wds.tariterators.group_by_keys(files, handler=handler)
