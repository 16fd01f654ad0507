"""Exponential moving average of the trainable U-Net weights."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from ls_video.checkpoint import EMA_KEY
from ls_video.errors import UsageError
from ls_video.module import LatentShiftModule
from ls_video.sharding import full, like, reshard


class EMA(L.Callback):
    """Keeps ``shadow = decay * shadow + (1 - decay) * weights`` of every trainable U-Net parameter.

    It averages the trainable parameters of a :class:`~ls_video.module.LatentShiftModule`'s ``unet`` and skips
    the steps the module drops (``skipping_step``, :class:`~ls_video.nonfinite.NonFiniteGuard`).
    The average is saved in and restored from checkpoints (a resumed run continues the same average),
    swapped in for validation, video logging and export, and swapped back afterwards. Under sharded
    training (FSDP2) each rank averages its own shard of every weight, and checkpoints hold the whole
    average (gathered on save, cut back into shards on resume), the same file a DDP run writes.

    Args:
        decay: the EMA decay at full strength.
        warmup: use ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so early weights fade fast.
        update_every: update every k optimizer steps.
        start_step: first optimizer step that updates the average (before it the shadow tracks the weights).
    """

    def __init__(self, decay: float = 0.999, warmup: bool = True, update_every: int = 1, start_step: int = 0
                 ) -> None:
        if not 0.0 <= decay < 1.0:
            raise UsageError(f"decay must be in [0, 1), got {decay}")
        if update_every < 1:
            raise UsageError(f"update_every must be >= 1, got {update_every}")
        self.decay, self.warmup, self.update_every = decay, warmup, update_every
        self.start_step = start_step
        self.shadow: dict[str, torch.Tensor] | None = None
        self.num_updates = 0
        self._backup: dict[str, torch.Tensor] | None = None
        self._ctx: Any = None  # the swap around a validation run
        self._seen_step: int | None = None  # the global step at the last train batch's end

    @staticmethod
    def _params(pl_module: LatentShiftModule) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in pl_module.unet.named_parameters() if p.requires_grad}

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    def on_fit_start(self, trainer: L.Trainer, pl_module: LatentShiftModule) -> None:
        if not isinstance(pl_module, LatentShiftModule):
            raise UsageError(f"EMA averages the U-Net of a LatentShiftModule, not of a {type(pl_module).__name__}")
        params = self._params(pl_module)
        if self.shadow is None:
            self.shadow = {n: p.detach().clone() for n, p in params.items()}
        else:  # restored from a checkpoint (before this hook under DDP, after it under FSDP2)
            self._lay_out(params)

    def _lay_out(self, params: dict[str, torch.nn.Parameter]) -> None:
        """Restored whole tensors laid out like the weights: on their device, a shard of each if sharded."""
        missing = set(params) - set(self.shadow)
        if missing:
            raise UsageError(f"EMA state lacks {len(missing)} trainable parameters, e.g. {sorted(missing)[:2]}")
        self.shadow = {n: like(self.shadow[n], p) for n, p in params.items()}

    def on_train_start(self, trainer: L.Trainer, pl_module: LatentShiftModule) -> None:
        self._seen_step = trainer.global_step  # (restored by now when resuming)

    @torch.no_grad()
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: LatentShiftModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Once per optimizer step: a micro-batch inside an accumulation window (``accumulate_grad_batches``)
        changed no weight, so it is not averaged."""
        step = trainer.global_step
        stepped, self._seen_step = step != self._seen_step, step
        if not stepped or step < self.start_step or step % self.update_every or self.shadow is None:
            return
        if pl_module.skipping_step:  # a non-finite step made no update: nothing to average
            return
        params = self._params(pl_module)
        decay = self.current_decay()
        names = list(self.shadow)
        shadows = [self.shadow[n] for n in names]
        current = [params[n].detach() for n in names]
        torch._foreach_lerp_(shadows, current, 1.0 - decay)
        self.num_updates += 1

    @contextmanager
    def swapped(self, pl_module: LatentShiftModule) -> Iterator[None]:
        """Run the body with the EMA weights in the U-Net; the raw weights come back after."""
        if self.shadow is None or self._backup is not None:
            yield
            return
        reshard(pl_module.unet)  # a sharded U-Net keeps some weights gathered after a no-grad forward
        params = self._params(pl_module)
        self._backup = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(self.shadow[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(self._backup[n])
            self._backup = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: LatentShiftModule) -> None:
        if trainer.state.fn == "fit":
            self._ctx = self.swapped(pl_module)
            self._ctx.__enter__()

    def on_validation_end(self, trainer: L.Trainer, pl_module: LatentShiftModule) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = None

    def state_dict(self) -> dict[str, Any]:
        return {"num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.num_updates = int(state_dict["num_updates"])
        rank_zero_info(f"EMA: resumed after {self.num_updates} updates")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: LatentShiftModule, checkpoint: dict[str, Any]) -> None:
        """The whole weights (gathered from the shards on every rank) go where
        :func:`ls_video.checkpoint.find_ema_state` (export, sampling) reads them."""
        if self.shadow:
            checkpoint[EMA_KEY] = {n: full(t.detach()).cpu() for n, t in self.shadow.items()}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: LatentShiftModule, checkpoint: dict[str, Any]) -> None:
        if checkpoint.get(EMA_KEY):
            self.shadow = dict(checkpoint[EMA_KEY])
            self._lay_out(self._params(pl_module))


def find_ema(trainer: L.Trainer) -> EMA | None:
    return next((cb for cb in trainer.callbacks if isinstance(cb, EMA)), None)
