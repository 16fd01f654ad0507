"""Log how many clips of each aspect-ratio / length bucket training has seen (bucketed datamodules)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from ls_video.consensus import StepEnd, consensus_of


class BucketCounts(L.Callback):
    """Logs ``data/bucket_{name}``: clips of each bucket trained on so far, summed over all ranks, every
    ``log_every_n_steps`` steps. Reads ``batch["bucket"]`` (set by bucketed datamodules,
    ``LatentVideoDataModule(buckets=...)``); the bucket names come from the datamodule's ``bucket_table()``, so
    every rank logs (and sums) the same keys. Does nothing with an unbucketed datamodule. Batches without a
    bucket (image batches of ``JointImageVideo``) are not counted. With several ranks the counts are summed at
    every optimizer step as a slot of the step's one agreement (:mod:`ls_video.consensus`).
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self.counts = torch.zeros(0, dtype=torch.float64)
        self._step_end = StepEnd()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        table_of = getattr(trainer.datamodule, "bucket_table", None) if trainer.datamodule is not None else None
        table = table_of() if table_of is not None else None
        self.names = [*table.sizes, "other"] if table is not None else []
        self.counts = torch.zeros(len(self.names), dtype=torch.float64)
        if stage == "fit" and self.names and trainer.world_size > 1:
            consensus_of(trainer).register("bucket_counts", len(self.names), lambda: self.counts.clone())

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._step_end.start(trainer)

    def totals(self, trainer: L.Trainer) -> dict[str, int]:
        """Clips per bucket over all ranks (with several ranks: as agreed at the last optimizer step)."""
        if trainer.world_size > 1:
            counts = consensus_of(trainer).result("bucket_counts")
        else:
            counts = self.counts.tolist()
        return {name: int(c) for name, c in zip(self.names, counts, strict=True)}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        """Counted before the step's agreement (made before the optimizer step)."""
        if not self.names:
            return
        name = batch.get("bucket") if isinstance(batch, dict) else None
        if name is not None:
            self.counts[self.names.index(name) if name in self.names else -1] += len(batch["latents"])

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self.names:
            return
        self._step_end.stepped(trainer)  # (makes the step's agreement if no participant made it before)
        if trainer.global_step % max(1, trainer.log_every_n_steps) == 0:
            totals = self.totals(trainer)
            pl_module.log_dict({f"data/bucket_{n}": float(v) for n, v in totals.items()}, on_step=True,
                               on_epoch=False, batch_size=1)
