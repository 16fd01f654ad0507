"""The shipped configs, made runnable on a CPU in seconds: every callback and setting kept, only the
sizes, the base and the output folders swapped (one visible place for what a test changes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TESTS_ON_PATH = {"PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def shipped_toy(tmp_path: Path, base: str, *, joint_from: int = 2, **trainer) -> dict:
    """``configs/toy.yaml`` with all its callbacks, on ``base`` and a 16-pixel, 4-frame world."""
    cfg = yaml.safe_load((ROOT / "configs" / "toy.yaml").read_text())
    out = str(tmp_path / "run")
    t = cfg["trainer"]
    t.update({"accelerator": "cpu", "max_steps": 6, "val_check_interval": 3, "default_root_dir": out,
              "enable_progress_bar": False, **trainer})
    t["logger"]["init_args"]["save_dir"] = out
    for cb in t["callbacks"]:
        if cb["class_path"] == "ls_video.callbacks.JointImageVideo":  # image batches from step 2, not 1100
            cb["init_args"].update(start_step=joint_from, batch_size=4)
    cfg["model"]["pretrained_model_name_or_path"] = base
    cfg["data"]["init_args"].update(cache_dir=str(tmp_path / "cache"), num_train_clips=16, num_val_clips=4,
                                    batch_size=2, world={"size": 16, "num_frames": 4, "object_size": 4})
    return cfg


def add_callback(cfg: dict, class_path: str, **init_args) -> dict:
    cfg["trainer"]["callbacks"].append({"class_path": class_path, "init_args": init_args})
    return cfg


def write(cfg: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def launch(*args: str, env: dict | None = None, torchrun: list[str] | None = None, **popen) -> subprocess.Popen:
    """``python train.py ARGS`` in the background (its own session, so a test can signal it alone); with
    ``torchrun`` (its arguments), ``torchrun TORCHRUN train.py ARGS``."""
    cmd = [sys.executable, "train.py", *args]
    if torchrun is not None:
        cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun, "train.py", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **TESTS_ON_PATH,
                            **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **popen)


def run(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = launch(*args, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        raise AssertionError(f"train.py {' '.join(args)} timed out:\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
