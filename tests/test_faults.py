"""Faults of the environment (issue #34, item 5): storage that stops answering, stop signals while waiting for it,
a trainer killed outright, a full disk, two runs in one folder, ranks with different amounts of data, and the
datamodule's user mistakes. Each test names the behaviour it guards against (docs/RELIABILITY.md, "Faults")."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from fault_helpers import ROOT, alive, children, dead_urls, kill_session, shard_config, start, wait_for_text

from ls_video.checkpoint_io import AtomicCheckpointIO
from ls_video.datamodules import LatentVideoDataModule
from ls_video.datamodules.storage import RemoteOptions
from ls_video.datamodules.stream import LatentClipStream
from ls_video.datamodules.synthetic import write_synthetic_shards
from ls_video.errors import DiskFullError, UsageError
from ls_video.preemption import DATA_STOP

FAST = RemoteOptions(connect_timeout=1.0, read_timeout=2.0, retries=1, backoff=0.2)
OUTAGE = "skipping bad sample (connection"  # the stream's log line once it is reading dead storage


def last_ckpt(tmp_path: Path) -> dict:
    return torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)


def test_a_stream_over_dead_storage_ends_with_the_last_error_after_stall_timeout():
    """Every shard refuses the connection: the resampled stream (which used to retry forever, yielding nothing)
    ends within ``stall_timeout`` (plus a shard attempt) with one ``DATA_STOP`` sample naming the last error."""
    stream = LatentClipStream(dead_urls(), resampled=True, remote=FAST, stall_timeout=1.0)
    got: list[dict] = []
    began = time.monotonic()
    reader = threading.Thread(target=lambda: got.append(next(iter(stream))), daemon=True)
    reader.start()
    reader.join(timeout=20)
    assert got, "the stream was still retrying dead storage after 20 s"
    assert 1.0 <= time.monotonic() - began < 10
    message = got[0][DATA_STOP]["stalled"]
    assert "no shard data for 1 s" in message and "last error: connection" in message and "127.0.0.1" in message


def test_storage_outage_stops_the_run_with_one_line_and_a_checkpoint(tiny_base, tmp_path):
    """Training from http shards whose server is gone, ``--data.init_args.stall_timeout 3``: exit 2 with one
    ``DataStalledError`` line naming the connection error and ``last.ckpt`` (before: alive, stepless, forever)."""
    config = shard_config(tmp_path, tiny_base, dead_urls(), stall_timeout=3.0)
    proc, log = start(tmp_path, "fit", "-c", str(config))
    try:
        proc.wait(timeout=240)
    except subprocess.TimeoutExpired:
        kill_session(proc)
        raise AssertionError(f"the run was still waiting for data after 240 s:\n{log.read_text()[-2000:]}") from None
    text = log.read_text()
    assert proc.returncode == 2, text[-3000:]
    lines = [line for line in text.splitlines() if "error: DataStalledError" in line]
    assert len(lines) == 1 and "Traceback" not in text, text[-3000:]
    assert "last error: connection" in lines[0] and "last.ckpt" in lines[0]
    assert last_ckpt(tmp_path)["global_step"] == 0


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGUSR1"])
def test_a_signal_while_waiting_for_data_stops_at_once_with_a_checkpoint(tiny_base, tmp_path, sig):
    """The storage is down and the run waits for data (no stall timeout): a signal ends it within seconds with
    ``last.ckpt`` and exit 128 + signal; meanwhile a second run into the same folder is refused in one line.
    Guards the handler that waited for a step boundary that never came (45 s and more, then SIGKILL), and
    two live runs writing one folder."""
    config = shard_config(tmp_path, tiny_base, dead_urls(), stall_timeout=None, num_workers=2)
    proc, log = start(tmp_path, "fit", "-c", str(config))
    try:
        wait_for_text(log, OUTAGE, proc)
        time.sleep(1.0)  # inside the training loop's wait for the first batch
        second, second_log = start(tmp_path, "fit", "-c", str(config), name="second")
        try:
            second.wait(timeout=120)
        except subprocess.TimeoutExpired:
            raise AssertionError("a second run into the live run's folder was not refused") from None
        finally:
            kill_session(second)
        text = second_log.read_text()
        assert second.returncode == 2, text[-3000:]
        assert "is in use by another run (pid" in text and "Traceback" not in text, text[-3000:]
        sent = time.monotonic()
        os.kill(proc.pid, getattr(signal, sig))
        rc = proc.wait(timeout=30)
        took = time.monotonic() - sent
    except subprocess.TimeoutExpired:
        raise AssertionError(f"no exit within 30 s of {sig}:\n{log.read_text()[-2000:]}") from None
    finally:
        kill_session(proc)
    assert rc == 128 + getattr(signal, sig), log.read_text()[-3000:]
    assert took < 15, took
    assert last_ckpt(tmp_path)["global_step"] == 0
    assert not (tmp_path / "run" / ".ls-video.lock").exists()


def test_dataloader_workers_die_with_a_sigkilled_trainer_and_its_lock_is_taken_over(tiny_base, tmp_path):
    """SIGKILL to a trainer whose 2 DataLoader workers retry dead storage: no worker is left (before: both lived
    on as orphans, retrying forever); the dead run's lock is stale, so the next run into the folder starts."""
    config = shard_config(tmp_path, tiny_base, dead_urls(), stall_timeout=None, num_workers=2)
    proc, log = start(tmp_path, "fit", "-c", str(config))
    try:
        wait_for_text(log, OUTAGE, proc)
        workers = children(proc.pid)
        assert len(workers) >= 2, workers
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.time() + 15
        while time.time() < deadline and any(alive(pid) for pid in workers):
            time.sleep(0.2)
        assert not [pid for pid in workers if alive(pid)], "DataLoader workers outlived their trainer"
    finally:
        kill_session(proc)
    assert (tmp_path / "run" / ".ls-video.lock").exists()  # left by the killed run
    config = shard_config(tmp_path, tiny_base, dead_urls(), stall_timeout=1.0, num_workers=0)
    r = subprocess.run([sys.executable, "train.py", "fit", "-c", str(config)], cwd=ROOT, capture_output=True,
                       text=True, timeout=240)
    assert r.returncode == 2 and "DataStalledError" in r.stderr and "in use" not in r.stderr, r.stderr[-3000:]


DISK_FULL = """
import os, sys, torch
from ls_video.checkpoint_io import AtomicCheckpointIO
from ls_video.errors import command

@command("save")
def main(argv):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"w": torch.arange(1_000_000.0)}, sys.argv[1])  # 4 MB: fits
    io.save_checkpoint({"w": torch.zeros(3_000_000)}, sys.argv[1])  # 12 MB: does not
    return 0

rc = main([])
print("left:", sorted(os.listdir(os.path.dirname(sys.argv[1]))))
print("first intact:", bool((torch.load(sys.argv[1], weights_only=True)["w"] == torch.arange(1_000_000.0)).all()))
sys.exit(rc)
"""


def unshare_works() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m none /tmp"], capture_output=True).returncode == 0


@pytest.mark.skipif(not unshare_works(), reason="needs unshare -rm and tmpfs mounts (user namespaces)")
def test_disk_full_while_checkpointing_is_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    """A 12 MiB tmpfs (a real full disk): the second save fails with one line naming the path, the free space
    and the intact previous checkpoint, exit 2, no ``.tmp`` left, the first checkpoint still loads. Before: a
    ``RuntimeError: ... unexpected pos`` traceback from torch's zip writer and a full disk's worth of ``.tmp``."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (tmp_path / "save.py").write_text(DISK_FULL)
    script = f"mount -t tmpfs -o size=12m none {mnt} && exec {sys.executable} {tmp_path / 'save.py'} {mnt}/last.ckpt"
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("save: error: DiskFullError: disk full writing checkpoint"), errors
    assert f"{mnt}/last.ckpt" in errors[0] and "MiB free when the save began" in errors[0]
    assert "the previous checkpoint" in errors[0] and "is intact" in errors[0]
    assert "left: ['last.ckpt']" in r.stdout and "first intact: True" in r.stdout, r.stdout


def test_disk_full_by_injection_removes_the_tmp_file(tmp_path, monkeypatch):
    """The same, where no tmpfs can be mounted: ``ENOSPC`` injected into the file's writes after 1 MiB gives
    :class:`DiskFullError` and no ``.tmp`` (before: torch's ``RuntimeError`` and the ``.tmp`` left)."""
    import builtins

    class Full:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, data):
            self.n += len(data)
            if self.n > 2**20:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda p, *a, **k: Full(real_open(p, *a, **k)) if str(p).endswith(".tmp")
                        else real_open(p, *a, **k))
    path = tmp_path / "step.ckpt"
    with pytest.raises(DiskFullError, match="disk full writing checkpoint .*step.ckpt"):
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(1_000_000)}, str(path))
    assert os.listdir(tmp_path) == []


def samples_per_rank(stream_of_rank) -> list[int]:
    return [sum(1 for _ in stream_of_rank(rank)) for rank in range(2)]


def test_validation_split_by_sample_gives_ranks_as_many_samples(tmp_path):
    """5 validation clips on 2 ranks: 2 each (before: 3 and 2, so one rank ran a batch the other never joined)."""
    write_synthetic_shards(tmp_path, num_shards=1, per_shard=5, shape=(2, 4, 8, 8))
    urls = str(tmp_path / "shard-000000.tar")
    assert samples_per_rank(lambda r: LatentClipStream(urls, r, 2, split_by="sample")) == [2, 2]


def test_a_non_resampled_pass_gives_ranks_as_many_shards(tmp_path):
    """3 shards on 2 ranks: one shard each per pass (before: 2 and 1, so the ranks' epochs differed in length)."""
    write_synthetic_shards(tmp_path, num_shards=3, per_shard=2, shape=(2, 4, 8, 8))
    urls = str(tmp_path / "shard-{000000..000002}.tar")
    assert samples_per_rank(lambda r: LatentClipStream(urls, r, 2)) == [2, 2]


def test_fewer_shards_than_ranks_times_workers_is_refused(tmp_path):
    """``resampled: false`` with 1 shard and 2 workers: a clear UsageError (before: no guard, a worker without
    data and uneven ranks)."""
    write_synthetic_shards(tmp_path, num_shards=1, per_shard=2, shape=(2, 4, 8, 8))
    data = LatentVideoDataModule(str(tmp_path / "shard-000000.tar"), resampled=False, num_workers=2)
    with pytest.raises(UsageError, match="1 training shards for 1 rank.* x 2 worker"):
        data.train_dataloader()


@pytest.mark.parametrize("kwargs,match", [
    ({"buckets": {}, "num_frames": 4}, "drop num_frames"),
    ({"stall_timeout": 0}, "stall_timeout must be > 0"),
])
def test_datamodule_mistakes_are_usage_errors(kwargs, match):
    """User mistakes are one-line ``UsageError`` (before: a bare ``ValueError``, shown with a traceback)."""
    with pytest.raises(UsageError, match=match):
        LatentVideoDataModule("x.tar", **kwargs)


@pytest.mark.slow
def test_odd_validation_count_on_two_processes_finishes(tiny_base, tmp_path):
    """DDP, 2 CPU processes, 5 validation clips in batches of 2, a collective in every validation batch (as a
    sharded forward has): both ranks run 1 validation batch and fit ends (before: rank 0 had 2 batches, rank 1
    one, and rank 0 waited in its second batch's collective forever)."""
    write_synthetic_shards(tmp_path / "train", num_shards=2, per_shard=4, shape=(2, 4, 8, 8))
    write_synthetic_shards(tmp_path / "val", num_shards=1, per_shard=5, shape=(2, 4, 8, 8), seed=1)
    config = shard_config(tmp_path, tiny_base, str(tmp_path / "train" / "shard-{000000..000001}.tar"),
                          val_urls=str(tmp_path / "val" / "shard-000000.tar"), num_workers=0,
                          trainer={"devices": 2, "strategy": "ddp", "max_steps": 2, "val_check_interval": 2,
                                   "check_val_every_n_epoch": None,
                                   "callbacks": [{"class_path": "val_collective.CollectivePerValBatch"}]})
    proc, log = start(tmp_path, "fit", "-c", str(config))
    try:
        rc = proc.wait(timeout=240)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"no end within 240 s (a rank waits in validation):\n{log.read_text()[-2000:]}") from None
    finally:
        kill_session(proc)
    assert rc == 0, log.read_text()[-3000:]
    assert last_ckpt(tmp_path)["global_step"] == 2
