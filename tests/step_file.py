"""Test helper callback (importable by train.py subprocesses with PYTHONPATH=tests)."""

import os

import lightning as L


class StepFile(L.Callback):
    """Writes ``{global_step} {pid}`` of rank ``rank`` to ``path`` after every optimizer step, so a test
    knows how far a run got and whom to signal."""

    def __init__(self, path: str, rank: int = 0) -> None:
        self.path, self.rank = path, rank

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_rank == self.rank:
            with open(f"{self.path}.tmp", "w") as f:
                f.write(f"{trainer.global_step} {os.getpid()}")
            os.replace(f"{self.path}.tmp", self.path)
