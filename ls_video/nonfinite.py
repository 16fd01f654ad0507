"""Skipping an optimizer step whose loss or gradients are NaN/inf on any rank, the same way on every rank."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from ls_video.consensus import consensus_of
from ls_video.errors import DivergedError


def _local(grad: torch.Tensor) -> torch.Tensor:
    """This rank's part of a gradient (a DTensor's local shard under FSDP2, else the tensor itself)."""
    return grad.to_local() if hasattr(grad, "to_local") else grad


class NonFiniteGuard(L.LightningModule):
    """Mixin for the LightningModule: ``training_step`` calls :meth:`note_loss` on each micro-batch's loss.

    The decision is made once per optimizer step, over its whole accumulation window
    (``accumulate_grad_batches``), in :meth:`on_before_optimizer_step`: if any micro-batch's loss was
    non-finite on any rank (or, without an fp16 gradient scaler, any gradient is), the step is skipped on
    every rank (its flag is a slot of the step's one agreement, :mod:`ls_video.consensus`): backward still
    ran everywhere (DDP stays in step), the window's gradients are dropped, the LR schedule and EMA do not
    advance, and ``train/nonfinite_steps`` counts it once; ``max_nonfinite_steps`` skipped steps in a row stop the run.
    """

    max_nonfinite_steps: int = 5

    def __init__(self) -> None:
        super().__init__()
        self.nonfinite_steps = 0
        self._nonfinite_in_a_row = 0
        self.skipping_step = False  # this optimizer step is skipped; read by callbacks (EMA) and the hooks below
        self.micro_batch = 0  # index of the next micro-batch within the accumulation window
        self._window_nonfinite: torch.Tensor | None = None  # a non-finite loss so far in this window (this rank)
        self._step_flag: torch.Tensor = torch.zeros(())  # this rank's flag for the step being agreed

    def on_train_start(self) -> None:
        """A fit starts at a window's start (checkpoints are written at optimizer steps only); the flag takes
        part in the step's agreement."""
        self.micro_batch, self._window_nonfinite = 0, None
        consensus_of(self.trainer).register("nonfinite", 1, lambda: self._step_flag)

    def note_loss(self, loss: torch.Tensor) -> bool:
        """Record a micro-batch's loss for this window's decision; whether it is finite on this rank."""
        bad = (~torch.isfinite(loss.detach())).float().reshape(())
        self._window_nonfinite = bad if self._window_nonfinite is None else self._window_nonfinite + bad
        return not bool(bad)

    def _grads_nonfinite(self, optimizer: torch.optim.Optimizer) -> torch.Tensor:
        grads = [_local(p.grad) for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return torch.zeros((), device=self.device)
        return (~torch.stack([torch.isfinite(g).all() for g in grads]).all()).float()

    def any_rank_nonfinite(self, flag: torch.Tensor) -> bool:
        """Whether ``flag`` (> 0: non-finite) is set on this or any other rank: this optimizer step's agreement
        (:mod:`ls_video.consensus`; no collective on one process)."""
        self._step_flag = flag.detach().float().reshape(())
        if self._trainer is None:
            return bool(self._step_flag > 0)
        consensus = consensus_of(self.trainer)
        if not consensus.registered("nonfinite"):  # (a step outside fit's hooks)
            consensus.register("nonfinite", 1, lambda: self._step_flag)
        consensus.agree(self.trainer, self.trainer.global_step)
        return consensus.result("nonfinite")[0] > 0

    def count_nonfinite(self) -> None:
        """Count a skipped step (the same count on every rank); stop after too many in a row."""
        self.nonfinite_steps += 1
        self._nonfinite_in_a_row += 1
        self.log("train/nonfinite_steps", float(self.nonfinite_steps), batch_size=1)
        if self._nonfinite_in_a_row >= self.max_nonfinite_steps:
            raise DivergedError(f"the loss or gradients were non-finite for {self._nonfinite_in_a_row} steps in a "
                                f"row (optimizer steps) at step {self.global_step}; stopping (the last checkpoint is "
                                "intact). Lower the learning rate, check the data, or use bf16/fp32 instead of "
                                "fp16.")

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Decide, once for the whole window and on every rank alike, whether this step is skipped, and drop
        its update if so: without gradients AdamW leaves every parameter and its state as they were. (Under
        fp16 the gradient scaler has unscaled and inspected the gradients already, before this hook; it skips
        steps with non-finite gradients itself, so only non-finite losses are judged here.)"""
        scaler = getattr(self.trainer.precision_plugin, "scaler", None) if self._trainer else None
        flag = self._window_nonfinite if self._window_nonfinite is not None else torch.zeros(())
        flag = flag.to(self.device)
        if scaler is None:
            flag = flag + self._grads_nonfinite(optimizer)
        self._window_nonfinite, self.micro_batch = None, 0
        self.skipping_step = self.any_rank_nonfinite(flag)
        if not self.skipping_step:
            self._nonfinite_in_a_row = 0
            return
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        self.count_nonfinite()

    def lr_scheduler_step(self, scheduler: Any, metric: Any = None) -> None:
        """Skipped steps do not advance the learning-rate schedule."""
        if self.skipping_step:
            return
        scheduler.step() if metric is None else scheduler.step(metric)
