"""Skipping a step whose loss is NaN/inf on any rank, the same way on every rank."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from ls_video.errors import DivergedError


class NonFiniteGuard(L.LightningModule):
    """Mixin for the LightningModule: ``training_step`` calls :meth:`guard_nonfinite` on its loss.

    A non-finite loss on any rank skips the step on every rank (one all-reduce): backward still runs
    everywhere (DDP stays in step), the update is dropped, the LR schedule and EMA do not advance, and
    ``train/nonfinite_steps`` counts it; ``max_nonfinite_steps`` in a row stop the run.
    """

    max_nonfinite_steps: int = 5

    def __init__(self) -> None:
        super().__init__()
        self.nonfinite_steps = 0
        self._nonfinite_in_a_row = 0
        self.skipping_step = False  # read by callbacks (EMA) and the hooks below

    def guard_nonfinite(self, loss: torch.Tensor) -> bool:
        """Whether this step is skipped (its loss is non-finite on some rank)."""
        self.skipping_step = self.any_rank_nonfinite(loss)
        if self.skipping_step:
            self.count_nonfinite(loss)
        else:
            self._nonfinite_in_a_row = 0
        return self.skipping_step

    def any_rank_nonfinite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is non-finite on this or any other rank (one all-reduce under DDP)."""
        flag = (~torch.isfinite(loss.detach())).float()
        if self._trainer is not None and self.trainer.world_size > 1:
            flag = self.trainer.strategy.reduce(flag, reduce_op="sum")
        return bool(flag > 0)

    def count_nonfinite(self, loss: torch.Tensor) -> None:
        """Count a skipped step (the same count on every rank); stop after too many in a row."""
        self.nonfinite_steps += 1
        self._nonfinite_in_a_row += 1
        self.log("train/nonfinite_steps", float(self.nonfinite_steps), batch_size=1)
        if self._nonfinite_in_a_row >= self.max_nonfinite_steps:
            raise DivergedError(f"loss was {loss.item()} for {self._nonfinite_in_a_row} steps in a row at step "
                                f"{self.global_step}; stopping (the last checkpoint is intact). Lower the "
                                "learning rate, check the data, or use bf16/fp32 instead of fp16.")

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Drop the update of a skipped step on every rank: without gradients AdamW leaves every parameter
        and its state as they were. Under fp16 the gradient scaler needs gradients to inspect, so they are
        made non-finite instead and the scaler skips the step itself."""
        if not self.skipping_step:
            return
        scaler = getattr(self.trainer.precision_plugin, "scaler", None) if self._trainer else None
        for group in optimizer.param_groups:
            for p in group["params"]:
                if scaler is not None and p.grad is not None:
                    p.grad.fill_(float("nan"))
                else:
                    p.grad = None

    def lr_scheduler_step(self, scheduler: Any, metric: Any = None) -> None:
        """Skipped steps do not advance the learning-rate schedule."""
        if self.skipping_step:
            return
        scheduler.step() if metric is None else scheduler.step(metric)
