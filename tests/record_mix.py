"""Test helper callback (importable by train.py subprocesses with PYTHONPATH=tests): place it after
``ls_video.callbacks.JointImageVideo`` in the callback list."""

import json
import os

import lightning as L

from ls_video.batch import IMAGE_BATCH


class RecordMix(L.Callback):
    """Writes, per step of this rank, ``[global_step, frames, batch size, keys]`` to ``{out}/rank{R}.json``
    (of the step's added image batch, ``JointImageVideo(mode="add")``, when it has one)."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.steps: list[list] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        batch = batch.get(IMAGE_BATCH, batch)
        shape = batch["latents"].shape
        self.steps.append([int(trainer.global_step), int(shape[1]), int(shape[0]), list(batch["keys"])])

    def on_train_end(self, trainer, pl_module):
        os.makedirs(self.out, exist_ok=True)
        with open(os.path.join(self.out, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(self.steps, f)
