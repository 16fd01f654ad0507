"""Measure training speed: optimizer steps per second, with validation and sampling time apart."""

from __future__ import annotations

import json
import os
import time

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only


class StepSpeed(L.Callback):
    """Times the training loop and prints, at the end of ``fit``, ``trained N steps in T s (X steps/s)``.

    Validation (and whatever runs inside it, e.g. ``VideoLogger``) is timed apart and excluded from the
    steps/s figure. The numbers are also written to ``{log_dir}/speed.json`` (with the peak GPU memory
    allocated by this rank, on a GPU).
    """

    def __init__(self) -> None:
        self._start: float | None = None
        self._first_step = 0
        self._val_start = 0.0
        self.val_seconds = 0.0
        self._log_dir = "."

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._log_dir = trainer.log_dir or trainer.default_root_dir  # on every rank: log_dir is a broadcast

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._first_step, self.val_seconds = time.perf_counter(), trainer.global_step, 0.0

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is not None:
            self.val_seconds += time.perf_counter() - self._val_start

    def summary(self, trainer: L.Trainer) -> dict:
        """Steps, seconds and steps/s since the training loop started."""
        total = time.perf_counter() - (self._start or time.perf_counter())
        steps = trainer.global_step - self._first_step
        train = max(total - self.val_seconds, 1e-9)
        out = {"steps": steps, "seconds": round(total, 1), "validation_seconds": round(self.val_seconds, 1),
               "steps_per_s": round(steps / train, 2)}
        if torch.cuda.is_available() and trainer.strategy.root_device.type == "cuda":
            out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(trainer.strategy.root_device) / 2**30, 2)
        return out

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        s = self.summary(trainer)
        print(f"trained {s['steps']} steps in {s['seconds']:.0f} s: {s['steps_per_s']:.2f} steps/s "
              f"(validation and video logging {s['validation_seconds']:.0f} s apart)", flush=True)
        os.makedirs(self._log_dir, exist_ok=True)
        with open(os.path.join(self._log_dir, "speed.json"), "w") as f:
            json.dump(s, f, indent=2)
