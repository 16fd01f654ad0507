"""Weights & Biases, offline: the shipped toy config with ``WandbLogger`` logs metrics and VideoLogger's videos."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from shipped import ROOT, shipped_toy, write

pytest.importorskip("wandb")


@pytest.mark.slow
def test_wandb_logger_offline_gets_metrics_and_videos(tiny_base, tmp_path):
    """Guards a video logger that only knows TensorBoard (videos never reach W&B) and a logger swap that the
    config cannot express."""
    cfg = shipped_toy(tmp_path, tiny_base, max_steps=3, val_check_interval=3)
    cfg["trainer"]["logger"] = {"class_path": "lightning.pytorch.loggers.WandbLogger",
                                "init_args": {"save_dir": str(tmp_path / "wb"), "offline": True, "project": "test"}}
    config = write(cfg, tmp_path / "config.yaml")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path / "wb")}
    r = subprocess.run([sys.executable, "train.py", "fit", "-c", str(config)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = list(Path(tmp_path / "wb").rglob("offline-run-*"))
    assert runs, list(Path(tmp_path / "wb").rglob("*"))[:20]
    videos = list(runs[0].rglob("media/videos/**/*.mp4"))
    assert len(videos) == 4, list(runs[0].rglob("*"))[:30]  # the config's 4 prompts, sampled at step 3
    assert list(runs[0].rglob("*.wandb"))  # the run's metrics and history, to `wandb sync` later
