"""Shards through fsspec: a real S3 API (moto's server on 127.0.0.1), a stalled and a cut S3 connection, and
http(s) through the proxy the environment names, with the headers the storage options give.

Before datamodules/storage.py, ``s3://`` shards were handed to webdataset's ``gopen`` (no S3 support: every shard
failed), http(s) ignored ``HTTP(S)_PROXY`` and headers could not be given at all.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.request import ProxyHandler, Request, build_opener

import boto3
import lightning as L
import pytest
from moto.server import ThreadedMotoServer
from test_reliability import shard_with_bad

from ls_video.callbacks.data_health import NETWORK_REASONS
from ls_video.datamodules import LatentVideoDataModule
from ls_video.datamodules.storage import RemoteOptions
from ls_video.datamodules.stream import LatentClipStream
from ls_video.datamodules.vae_check import first_meta
from ls_video.errors import UsageError
from ls_video.module import LatentShiftModule
from ls_video.optim import OptimConfig

BUCKET = "shards"
KEYS = {f"{i:09d}" for start in (0, 100) for i in range(start, start + 6)}  # shard-000 and shard-001


class FaultyFront:
    """A TCP relay to ``upstream`` on 127.0.0.1 that counts requests by path; a GET whose path holds ``stall``
    gets the response headers and 1 KiB of body, then silence; one holding ``cut`` gets the same, then the
    connection closes."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream, self.requests, self.stop = upstream, Counter(), threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        up = socket.create_connection(self.upstream)
        fault: list[str | None] = [None]

        def forward() -> None:  # client -> upstream; marks the response of a faulty GET
            while data := client.recv(65536):
                method, _, rest = data.partition(b" ")
                if method.isalpha() and method.isupper():  # a new request on this connection
                    path = rest.split(b" ", 1)[0].decode()
                    self.requests[(method.decode(), path.split("?")[0])] += 1
                    fault[0] = next((f for f in ("stall", "cut") if f in path), None) if method == b"GET" else None
                up.sendall(data)

        threading.Thread(target=forward, daemon=True).start()
        buf = b""
        try:
            while data := up.recv(65536):
                if fault[0] is None:
                    client.sendall(data)
                    continue
                buf += data
                end = buf.find(b"\r\n\r\n")
                if end >= 0 and len(buf) >= end + 4 + 1024:
                    client.sendall(buf[: end + 4 + 1024])
                    if fault[0] == "stall":
                        self.stop.wait(60)
                    return
        except OSError:
            pass
        finally:
            for s in (client, up):  # shutdown: the FIN goes out now, though forward() still blocks in recv
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on a free 127.0.0.1 port, bucket ``shards``: ``shard-000.tar``, ``shard-001.tar``,
    ``stall-000.tar``, ``cut-000.tar`` (6 latent samples each); yields ``(endpoint, FaultyFront before it)``."""
    with pytest.MonkeyPatch.context() as env:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            env.delenv(name, raising=False)
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        root = tmp_path_factory.mktemp("s3")
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=BUCKET)
        for name, start in (("shard-000", 0), ("shard-001", 100), ("stall-000", 200), ("cut-000", 300)):
            shard_with_bad(root / f"{name}.tar", 6, bad_every=0, start=start)
            client.upload_file(str(root / f"{name}.tar"), BUCKET, f"{name}.tar")
        front = FaultyFront((host, port))
        yield endpoint, front
        front.stop.set()
        front.sock.close()
        server.stop()


def test_datamodule_trains_from_s3_shards(s3, tiny_base, tmp_path, monkeypatch):
    """``s3://bucket/shard-{000..001}.tar`` with the endpoint from ``AWS_ENDPOINT_URL``: two DataLoader workers,
    forked after this process read the first shard's record (as the checks before step 1 do), read every sample
    once; then, with the endpoint from ``storage_options`` instead, ``fit`` runs (the shard
    checks before step 1 read the first shard over S3 too). Guards against s3:// shards being unreadable (old:
    gopen knew no s3://) and ``storage_options`` not reaching the filesystem."""
    endpoint, _ = s3
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    urls = f"s3://{BUCKET}/shard-{{000..001}}.tar"
    data = LatentVideoDataModule(urls, batch_size=3, num_workers=2, resampled=False, epoch_length=None,
                                 shuffle_buffer=0, remote={"read_timeout": 5, "retries": 0})
    assert first_meta(f"s3://{BUCKET}/shard-000.tar", data.remote) == {}  # the client and its loop now exist
    keys = [k for batch in data.train_dataloader() for k in batch["keys"]]
    assert sorted(keys) == sorted(KEYS)
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    data = LatentVideoDataModule(urls, batch_size=2, num_workers=0, shuffle_buffer=0, epoch_length=4,
                                 storage_options={"endpoint_url": endpoint})
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(LatentShiftModule(tiny_base, optim=OptimConfig(warmup_steps=0)), datamodule=data)
    assert trainer.global_step == 2


def test_stalled_s3_connection_is_cut_by_the_read_timeout_and_counted(s3):
    """The object store accepts, sends 1 KiB of a shard, then stalls: after about ``read_timeout`` the shard is
    skipped as ``timeout`` (a network error, not bad data) and the next shard is read whole. Guards against a
    stalled S3 read hanging the stream (or s3fs's default 15 s timeout and 5 attempts applying instead)."""
    endpoint, front = s3
    opts = RemoteOptions(connect_timeout=2, read_timeout=1, retries=0, storage_options={"endpoint_url": front.url})
    stream = LatentClipStream([f"s3://{BUCKET}/{n}.tar" for n in ("stall-000", "shard-000")], remote=opts)
    start = time.monotonic()
    keys = {s["key"] for s in stream}
    elapsed = time.monotonic() - start
    assert keys == {f"{i:09d}" for i in range(6)}
    assert dict(stream.skipped) == {"timeout": 1} and "timeout" in NETWORK_REASONS
    assert front.requests[("GET", f"/{BUCKET}/stall-000.tar")] == 1
    assert elapsed < 6, f"{elapsed:.1f} s: a stalled shard must cost about read_timeout (1 s)"


def test_cut_s3_connection_is_retried_then_counted_as_truncated(s3):
    """The object store closes the connection half-way through the body, every time: the read is asked again
    ``retries`` times (2 GETs with ``retries=1``), then the shard is skipped as ``truncated`` and the stream goes
    on. A missing object is ``http_error`` and not asked again (a backoff of 5 s would show). Guards against
    a cut S3 transfer ending the stream, going uncounted, or being retried without bound."""
    _, front = s3
    opts = RemoteOptions(connect_timeout=2, read_timeout=2, retries=1, backoff=5,
                         storage_options={"s3": {"endpoint_url": front.url}})
    stream = LatentClipStream([f"s3://{BUCKET}/{n}.tar" for n in ("cut-000", "shard-001", "none")], remote=opts)
    start = time.monotonic()
    keys = {s["key"] for s in stream}
    assert keys == {f"{i:09d}" for i in range(100, 106)}
    assert dict(stream.skipped) == {"truncated": 1, "http_error": 1}
    assert "truncated" in NETWORK_REASONS and "http_error" not in NETWORK_REASONS
    assert front.requests[("GET", f"/{BUCKET}/cut-000.tar")] == 2
    assert time.monotonic() - start < 5


@pytest.fixture()
def origin_and_proxy(tmp_path):
    """An http origin serving ``good.tar`` (recording each request's headers) and a forward proxy counting the
    requests it relays, both on 127.0.0.1."""
    shard_with_bad(tmp_path / "good.tar", 6, bad_every=0)
    body = (tmp_path / "good.tar").read_bytes()
    seen_headers: list[dict] = []
    relayed: list[str] = []

    class Origin(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            seen_headers.append(dict(self.headers))
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Proxy(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # self.path is the absolute URL a proxied client asks for
            relayed.append(self.path)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "proxy-connection")}
            with build_opener(ProxyHandler({})).open(Request(self.path, headers=headers), timeout=5) as r:  # direct
                data = r.read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    servers = [ThreadingHTTPServer(("127.0.0.1", 0), h) for h in (Origin, Proxy)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    yield (f"http://127.0.0.1:{servers[0].server_address[1]}", f"http://127.0.0.1:{servers[1].server_address[1]}",
           seen_headers, relayed)
    for s in servers:
        s.shutdown()


def test_http_shards_go_through_the_environment_proxy_with_headers(origin_and_proxy, monkeypatch):
    """``HTTP_PROXY`` set: the shard is fetched through that proxy, with one request, and the ``headers`` of the
    storage options (keyed by protocol) reach the server. Guards against the proxy being bypassed (old: a direct
    connection, the proxy saw nothing) and auth headers being impossible to send."""
    origin, proxy, seen_headers, relayed = origin_and_proxy
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.setenv("http_proxy", proxy)
    opts = RemoteOptions(read_timeout=5, retries=0,
                         storage_options={"http": {"headers": {"Authorization": "Bearer s3cret"}}})
    stream = LatentClipStream(f"{origin}/good.tar", remote=opts)
    assert len(list(stream)) == 6 and not stream.skipped
    assert relayed == [f"{origin}/good.tar"]
    assert [h.get("Authorization") for h in seen_headers] == ["Bearer s3cret"]


def test_unknown_protocol_or_missing_backend_is_one_usage_error():
    """A URL no fsspec filesystem serves stops at construction with one line naming the protocol, not as an error
    raised in every DataLoader worker (old: accepted, then every shard failed in gopen)."""
    with pytest.raises(UsageError, match="nosuch://"):
        LatentClipStream("nosuch://bucket/shard-{000..001}.tar")
