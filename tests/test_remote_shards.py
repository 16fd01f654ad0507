"""Remote shards that stall, close early, 404 or fail once: skipped and counted, never waited on forever."""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import lightning as L
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from test_reliability import shard_with_bad

from ls_video.callbacks import DataHealth
from ls_video.datamodules import LatentVideoDataModule
from ls_video.datamodules.storage import RemoteOptions, ShardReadError, open_shard
from ls_video.datamodules.stream import LatentClipStream
from ls_video.module import LatentShiftModule
from ls_video.optim import OptimConfig

FAST = RemoteOptions(connect_timeout=2, read_timeout=1, retries=1, backoff=0.05)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """127.0.0.1 server: good-{0,1}.tar, stall.tar (1 KiB then silence), cut.tar (closes half-way),
    missing.tar (404), flaky.tar (503 on the first request of each run, then the shard)."""
    root = tmp_path_factory.mktemp("remote")
    for i in range(2):
        shard_with_bad(root / f"good-{i}.tar", 6, bad_every=0, start=100 * i)
    shard_with_bad(root / "flaky.tar", 6, bad_every=0, start=200)
    body = (root / "good-0.tar").read_bytes()
    stop = threading.Event()
    seen: dict[str, int] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def send_body(self, data: bytes, send: int | None = None) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:send] if send is not None else data)
            self.wfile.flush()

        def do_GET(self):
            name = self.path.strip("/")
            seen[name] = seen.get(name, 0) + 1
            if name.startswith("good-"):
                self.send_body((root / name).read_bytes())
            elif name == "stall.tar":
                self.send_body(body, send=1024)
                stop.wait(60)
            elif name == "cut.tar":
                self.send_body(body, send=len(body) // 2)
                self.close_connection = True
            elif name == "flaky.tar" and seen[name] % 2 == 1:
                self.send_error(503)
            elif name == "flaky.tar":
                self.send_body((root / name).read_bytes())
            else:
                self.send_error(404)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    stop.set()
    httpd.shutdown()


def test_each_fault_is_skipped_and_counted_by_reason(server):
    names = ["good-0", "stall", "cut", "missing", "flaky", "good-1"]
    stream = LatentClipStream([f"{server}/{n}.tar" for n in names], remote=FAST)
    start = time.monotonic()
    keys = [s["key"] for s in stream]
    elapsed = time.monotonic() - start
    expected = {f"{i:09d}" for start in (0, 100, 200) for i in range(start, start + 6)}
    assert expected <= set(keys)  # good-0, good-1 and flaky (503 once, then retried) read whole
    assert stream.skipped["timeout"] == 1 and stream.skipped["truncated"] == 1
    assert stream.skipped["http_error"] == 1  # the 404, asked once
    assert elapsed < 15, f"{elapsed:.1f} s: a stalled shard must cost about read_timeout, not forever"


def test_pipe_commands_stall_fail_and_succeed(tmp_path):
    shard_with_bad(tmp_path / "a.tar", 4, bad_every=0)
    ok = LatentClipStream(f"pipe:cat {tmp_path / 'a.tar'}", remote=FAST)
    assert len(list(ok)) == 4 and not ok.skipped
    start = time.monotonic()
    stalled = LatentClipStream(f"pipe:head -c 1024 {tmp_path / 'a.tar'}; sleep 30", remote=FAST)
    assert list(stalled) == [] and stalled.skipped["timeout"] == 1
    assert time.monotonic() - start < 10  # the stalled command was killed
    failing = LatentClipStream("pipe:exit 3", remote=FAST)
    assert list(failing) == [] and failing.skipped["pipe_error"] == 1


def test_open_shard_gives_up_after_retries_and_never_retries_a_404(server):
    with pytest.raises(ShardReadError) as err:
        open_shard(f"{server}/missing.tar", FAST)
    assert err.value.reason == "http_error" and "404" in str(err.value)
    with pytest.raises(ShardReadError) as err:
        open_shard("http://127.0.0.1:9/none.tar", FAST)  # nothing listens on the discard port
    assert err.value.reason == "connection"


@pytest.mark.slow
def test_training_from_faulty_remote_shards_finishes_in_bounded_time(server, tiny_base, tmp_path):
    """Resampled shards, 2 DataLoader workers, every fault in the mix: 12 steps in bounded time, then
    the run's last checkpoint resumes to step 14 (nothing is lost)."""
    urls = [f"{server}/{n}.tar" for n in ("good-0", "stall", "cut", "missing", "good-1")]

    def run(steps: int, ckpt_path: str | None = None) -> tuple[L.Trainer, DataHealth]:
        data = LatentVideoDataModule(urls, batch_size=2, num_workers=2, resampled=True, epoch_length=1000,
                                     shuffle_buffer=0,
                                     remote=RemoteOptions(read_timeout=1, connect_timeout=2, retries=0))
        health = DataHealth(max_bad_fraction=1.0, min_samples=10**6)
        checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=4)
        trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=tmp_path, callbacks=[health, checkpoints])
        module = LatentShiftModule(tiny_base, optim=OptimConfig(warmup_steps=0))
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
        return trainer, health

    start = time.monotonic()
    trainer, health = run(12)
    assert trainer.global_step == 12
    assert time.monotonic() - start < 120
    _, reasons, _ = health.totals()
    assert reasons["timeout"] >= 1, reasons  # the stalled shard was drawn, cost ~1 s, and training went on
    trainer, _ = run(14, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert trainer.global_step == 14
