"""Test helper callback (importable by train.py subprocesses with PYTHONPATH=tests)."""

import lightning as L


class PlantBad(L.Callback):
    """On rank ``rank`` only, makes every batch's ``data_stats`` report as many corrupt samples as good ones
    (from a shard named ``planted.tar``), as if that rank's shards were half broken."""

    def __init__(self, rank: int = 1) -> None:
        self.rank = rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        stats = batch.get("data_stats")
        if trainer.global_rank == self.rank and stats:
            stats["skipped"] = {**stats["skipped"], "corrupt_npy": stats["yielded"]}
            stats["by_shard"] = {"planted.tar": stats["yielded"]}
