"""Test helper callback (importable by train.py subprocesses with PYTHONPATH=tests)."""

import json
import os

import lightning as L

from ls_video.module import IMAGE_BATCH


class RecordBuckets(L.Callback):
    """Writes, per step of this rank, ``[global_step, bucket, keys, frames of the added image batch or 0]`` to
    ``{out}/rank{R}.json`` (place it after ``ls_video.callbacks.JointImageVideo``)."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.steps: list[list] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        images = batch.get(IMAGE_BATCH)
        self.steps.append([int(trainer.global_step), batch.get("bucket"), list(batch["keys"]),
                           int(images["latents"].shape[1]) if images is not None else 0])

    def on_train_end(self, trainer, pl_module):
        os.makedirs(self.out, exist_ok=True)
        with open(os.path.join(self.out, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(self.steps, f)
