"""Opening shards wherever they live, through fsspec, with timeouts, bounded retries and named failures.

``s3://``, ``gs://``, ``hf://``, ``http(s)://`` and any other fsspec URL is opened by its fsspec filesystem
(s3fs, gcsfs, huggingface_hub's ``HfFileSystem``, aiohttp), as webdataset's ``gopen`` and huggingface_hub do:
credentials, endpoints, proxies (``HTTP(S)_PROXY``, honoured for http(s)) and headers come from the usual
environment and config files, or from :attr:`RemoteOptions.storage_options` (passed to the filesystem:
``{"headers": {...}}``, ``{"endpoint_url": ...}``, or one dict per protocol, ``{"s3": {...}, "http": {...}}``).
``connect_timeout`` / ``read_timeout`` are set on http(s) (aiohttp) and s3 (botocore); ``pipe:CMD`` runs ``CMD``
and kills it when no byte arrives for ``read_timeout``; local paths are opened directly.
Failures raise :class:`ShardReadError` with a ``reason`` the stream counts under (``timeout``,
``http_error``, ``http_5xx``, ``truncated``, ``connection``, ``pipe_error``). Opening is retried
``retries`` times with exponential backoff; a failure after bytes were read is not (the shard's first
samples were already used: the rest of that shard is skipped and counted), except that s3fs re-requests a
broken range itself from where it stopped (up to ``retries`` times; no sample is repeated).
"""

from __future__ import annotations

import copy
import io
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec
import webdataset as wds

from ls_video.errors import UnreachableError, UsageError

# Exception class names (anywhere in an error's MRO or cause chain) by what they mean, across aiohttp, botocore,
# requests and httpx, so that no backend has to be imported to classify its errors.
_TIMEOUT = {"TimeoutError", "ReadTimeoutError", "ConnectTimeoutError", "ReadTimeout", "ConnectTimeout"}
_CUT = {"ClientPayloadError", "IncompleteRead", "IncompleteReadError", "ResponseStreamingError",
        "ChunkedEncodingError", "RemoteProtocolError", "ProtocolError"}
_REFUSED = {"FileNotFoundError", "PermissionError", "IsADirectoryError"}
_CONNECTION = {"ConnectionError", "ClientConnectionError", "EndpointConnectionError", "OSError"}


class ShardReadError(UnreachableError):
    """A shard could not be (fully) read; ``reason`` names why."""

    def __init__(self, reason: str, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.reason, self.retryable = reason, retryable


@dataclass
class RemoteOptions:
    """Timeouts (seconds) and retries for remote shards, and fsspec ``storage_options`` for their filesystem."""

    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retries: int = 2
    backoff: float = 1.0
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.connect_timeout <= 0 or self.read_timeout <= 0 or self.retries < 0:
            raise UsageError("connect_timeout and read_timeout must be > 0 and retries >= 0")
        if not isinstance(self.storage_options, dict):
            raise UsageError(f"storage_options must be a dict (JSON object), got {self.storage_options!r}")


def _status(err: BaseException) -> int | None:
    """The HTTP status an aiohttp / botocore / requests error carries, if any."""
    response = getattr(err, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        return response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    status = getattr(err, "status", None) or getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def classify(err: BaseException, url: str, reading: bool) -> ShardReadError | None:
    """``err`` (raised while opening ``url``, or ``reading`` it) as a :class:`ShardReadError`; ``None`` if it is
    no storage failure (a bug, or bad input the caller reports itself). The whole cause chain is read: backends
    wrap (and s3fs 2026.9 turns a read timeout into an ``IndexError`` raised from it)."""
    chain: list[BaseException] = []
    while err is not None and err not in chain and len(chain) < 8:
        chain.append(err)
        err = err.__cause__ or err.__context__

    def found(kinds: set[str]) -> str | None:
        hit = next((e for e in chain if kinds & {c.__name__ for c in type(e).__mro__}), None)
        return None if hit is None else f"{url}: {type(hit).__name__}: {hit}".rstrip(": ")

    status = next((s for s in map(_status, chain) if s and s >= 400), None)
    if message := found(_TIMEOUT):
        return ShardReadError("timeout", message)
    if status is not None:
        return ShardReadError("http_5xx" if status >= 500 else "http_error", f"{url}: HTTP {status}", status >= 500)
    if found(_REFUSED):
        what = "not found (404)" if found({"FileNotFoundError"}) else f"access denied ({type(chain[0]).__name__})"
        return ShardReadError("http_error", f"{url}: {what}", retryable=False)
    if message := found(_CUT) or (reading and found(_CONNECTION)):
        return ShardReadError("truncated", f"{message} (the transfer broke off)")
    if message := found(_CONNECTION):
        return ShardReadError("connection", message)
    return None


class _Guarded(io.RawIOBase):
    """An fsspec file whose read failures become :class:`ShardReadError`."""

    def __init__(self, f: Any, url: str) -> None:
        self.f, self.url = f, url

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            data = self.f.read(len(buffer))
        except Exception as err:
            found = classify(err, self.url, reading=True)
            if found is None:
                raise
            raise found from err
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self.f.close()
        except Exception:  # noqa: BLE001 - closing a broken connection may fail again; nothing is lost
            pass
        super().close()


def filesystem_options(protocol: str, opts: RemoteOptions) -> dict[str, Any]:
    """``opts.storage_options`` for ``protocol`` (its own entry when they are keyed by protocol), with the
    timeouts and retries of ``opts`` wherever the user did not set them, and ``trust_env`` (proxies) for http."""
    given = opts.storage_options
    names = fsspec.get_filesystem_class(protocol).protocol
    names = (names,) if isinstance(names, str) else names
    keyed = next((given[n] for n in names if n in given), None)
    if keyed is None and set(given) & set(fsspec.available_protocols()):
        keyed = {}  # keyed by protocol, none for this one
    options = copy.deepcopy(given if keyed is None else keyed)
    if "http" in names:
        import aiohttp

        client = options.setdefault("client_kwargs", {})
        client.setdefault("timeout", aiohttp.ClientTimeout(total=None, connect=opts.connect_timeout,
                                                           sock_connect=opts.connect_timeout,
                                                           sock_read=opts.read_timeout))
        client.setdefault("trust_env", True)  # HTTP(S)_PROXY, NO_PROXY, ~/.netrc
    elif "s3" in names:
        config = options.setdefault("config_kwargs", {})
        config.setdefault("connect_timeout", opts.connect_timeout)
        config.setdefault("read_timeout", opts.read_timeout)
        config.setdefault("retries", {"total_max_attempts": 1})  # s3fs and open_shard retry, not botocore too
    return options


def _open_fsspec(url: str, opts: RemoteOptions):
    protocol = url.split("://", 1)[0]
    try:
        fs = fsspec.filesystem(protocol, **filesystem_options(protocol, opts))
    except (ImportError, ValueError, TypeError) as err:
        raise UsageError(f"cannot open {url}: {err}") from None
    if getattr(fs, "protocol", None) == ("s3", "s3a"):
        fs.retries = opts.retries + 1  # s3fs's attempts per request (and per broken range read)
    try:
        if "http" in fs.protocol:  # one streamed GET (fsspec's seekable file would ask for the size first)
            from fsspec.asyn import sync
            from fsspec.implementations.http import HTTPStreamFile

            f = HTTPStreamFile(fs, url, loop=fs.loop, session=sync(fs.loop, fs.set_session), **fs.kwargs)
        else:
            f = fs.open(url, "rb")
    except Exception as err:
        found = classify(err, url, reading=False)
        if found is None:
            raise
        raise found from err
    return io.BufferedReader(_Guarded(f, url))


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


def check_protocols(urls: list[str]) -> None:
    """Raise :class:`UsageError` (one line, before any worker starts) for a URL whose protocol fsspec does not know
    or whose filesystem package is missing (``gs://`` without ``gcsfs``)."""
    for protocol in sorted({u.split("://", 1)[0] for u in urls if "://" in u and not u.startswith("pipe:")}):
        try:
            fsspec.get_filesystem_class(protocol)
        except (ImportError, ValueError) as err:
            raise UsageError(f"cannot read {protocol}:// shards: {err}") from None


def _open_once(url: str, opts: RemoteOptions):
    if url.startswith("pipe:"):
        return io.BufferedReader(_PipeStream(url[len("pipe:"):], opts.read_timeout))
    if "://" in url:
        return _open_fsspec(url, opts)
    return wds.gopen(url)


def open_shard(url: str, opts: RemoteOptions | None = None):
    """A readable binary stream of ``url``; retries opening with backoff, then raises :class:`ShardReadError`.

    Client errors (a 404, a missing object, denied access) are not retried: asking again gives the same answer.
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
