"""Helpers of tests/test_faults.py: a training config over latent shards, a trainer started in the background
with its output in files, and the processes of a session read from /proc."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def dead_urls(n: int = 4) -> str:
    """http shard URLs on a local port nothing listens on: every read is refused (a storage outage)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/shard-{{000000..{n - 1:06d}}}.tar"


def shard_config(tmp_path: Path, base: str, train_urls: str, *, trainer: dict | None = None, **data) -> Path:
    """A ``fit`` config: the tiny base on ``LatentVideoDataModule(train_urls)``, 2-clip batches, fast remote
    timeouts (two attempts per shard), no logger; ``data`` and ``trainer`` override (``None`` values: left out)."""
    data = {k: v for k, v in data.items() if v is not None}
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 4, "default_root_dir": str(tmp_path / "run"),
                    "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
                    "num_sanity_val_steps": 0, **(trainer or {})},
        "checkpoint": {"every_n_train_steps": 1000},
        "model": {"pretrained_model_name_or_path": base, "optim": {"warmup_steps": 0, "learning_rate": 1e-3}},
        "data": {"class_path": "ls_video.datamodules.LatentVideoDataModule",
                 "init_args": {"train_urls": train_urls, "batch_size": 2, "num_workers": 1, "shuffle_buffer": 0,
                               "remote": {"connect_timeout": 1.0, "read_timeout": 2.0, "retries": 1,
                                          "backoff": 0.2}, **data}},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start(tmp_path: Path, *args: str, name: str = "train") -> tuple[subprocess.Popen, Path]:
    """``python train.py ARGS`` in its own session; stdout and stderr go to ``tmp_path/NAME.log``."""
    log = tmp_path / f"{name}.log"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def wait_for_text(log: Path, text: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if text in log.read_text():
            return
        assert proc.poll() is None, f"run ended early ({proc.returncode}):\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} within {timeout} s:\n{log.read_text()[-3000:]}")


def children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[1] == pid and stat[0] != "Z":
                out.append(int(entry))
    return out


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def _stat(pid: int) -> tuple[str, int] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL whatever is left of the session ``proc`` leads (clean-up after a failed test)."""
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass
    proc.wait()

