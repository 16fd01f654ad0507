"""Test helper callback (importable by train.py subprocesses with PYTHONPATH=tests)."""

import json
import os

import lightning as L


class RecordKeys(L.Callback):
    """Writes the sample keys each rank trained on to ``{out}/rank{R}.json``."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.keys: list[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.keys += list(batch["keys"])

    def on_train_end(self, trainer, pl_module):
        os.makedirs(self.out, exist_ok=True)
        with open(os.path.join(self.out, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(self.keys, f)
