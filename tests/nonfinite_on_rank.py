"""Test helper callback (importable by train.py subprocesses with PYTHONPATH=tests)."""

import hashlib
import json
import os

import lightning as L
import torch

from ls_video.callbacks.ema import find_ema


class NonFiniteOnRank(L.Callback):
    """Makes rank ``rank``'s batch NaN at optimizer step ``step`` (so only that rank's loss is non-finite)
    and writes each rank's final state to ``{out}/rank{R}.json``. ``first_micro_batch``: under gradient
    accumulation, only the first micro-batch of that step's window (the others stay finite)."""

    def __init__(self, out: str, rank: int = 1, step: int = 1, first_micro_batch: bool = False) -> None:
        self.out, self.rank, self.step, self.first_micro_batch = out, rank, step, first_micro_batch
        self.lrs: list[float] = []
        self._done = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == self.rank and trainer.global_step == self.step and not self._done:
            batch["latents"].fill_(float("nan"))
            self._done = self.first_micro_batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_end(self, trainer, pl_module):
        weights = torch.cat([p.detach().flatten() for p in pl_module.unet.parameters()])
        ema = find_ema(trainer)
        state = {"global_step": trainer.global_step, "nonfinite_steps": pl_module.nonfinite_steps,
                 "weights": hashlib.sha256(weights.numpy().tobytes()).hexdigest(), "lrs": self.lrs,
                 "ema_updates": ema.num_updates if ema else None}
        os.makedirs(self.out, exist_ok=True)
        with open(os.path.join(self.out, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(state, f)
