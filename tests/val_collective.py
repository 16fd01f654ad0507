"""Test helper callback (importable by train.py subprocesses with PYTHONPATH=tests)."""

import lightning as L
import torch


class CollectivePerValBatch(L.Callback):
    """One all-reduce per validation batch, as a sharded (FSDP) forward has: ranks with different numbers of
    validation batches then wait in it forever."""

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        trainer.strategy.reduce(torch.ones(1), reduce_op="sum")
