"""Optimiser and learning-rate schedule of the U-Net: AdamW + diffusers' warmup schedules."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from diffusers.optimization import get_scheduler

from ls_video.errors import UsageError

SCHEDULES = {"constant": "constant_with_warmup", "cosine": "cosine"}


@dataclass
class OptimConfig:
    """AdamW and its schedule.

    Args:
        learning_rate: peak learning rate.
        betas, weight_decay, adam_epsilon: AdamW's.
        warmup_steps: linear warmup from 0 (diffusers' ``get_scheduler``).
        lr_schedule: ``constant`` after warmup, or ``cosine`` decay to 0 over the run.
        decay_steps: with ``constant``: decay linearly over the run's last ``decay_steps`` steps, to
            ``min_lr_fraction`` x ``learning_rate`` at the last step (warmup-stable-decay; 0: no decay).
        min_lr_fraction: the learning rate at the end of ``decay_steps``, as a fraction of the peak.
        trainable_patterns: regexes over U-Net parameter names that train; ``None`` trains all (as in
            the paper). Example: ``["conv1", "conv2"]`` trains only ResNet convolutions.
        fused_adamw: fused AdamW kernel; ``None`` uses it when every trainable parameter is on a GPU.
        optimizer: ``adamw`` (torch) or ``adamw8bit`` (bitsandbytes' 8-bit AdamW: optimizer state in 8 bits,
            about 6 bytes less per trainable parameter; ``pip install bitsandbytes``, a GPU optimizer).
    """

    learning_rate: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    warmup_steps: int = 500
    lr_schedule: Literal["constant", "cosine"] = "constant"
    decay_steps: int = 0
    min_lr_fraction: float = 0.0
    trainable_patterns: list[str] | None = None
    fused_adamw: bool | None = None
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "adamw8bit"):
            raise UsageError(f"optimizer must be adamw or adamw8bit, got {self.optimizer!r}")
        if self.optimizer == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
            raise UsageError("optimizer adamw8bit needs bitsandbytes, which is not installed: "
                             "pip install bitsandbytes (or ls-video[bnb])")
        if self.lr_schedule not in SCHEDULES:
            raise UsageError(f"lr_schedule must be one of {sorted(SCHEDULES)}, got {self.lr_schedule!r}")
        if self.decay_steps < 0 or not 0.0 <= self.min_lr_fraction <= 1.0:
            raise UsageError(f"need decay_steps >= 0 and 0 <= min_lr_fraction <= 1, got {self.decay_steps}, "
                             f"{self.min_lr_fraction}")
        if self.decay_steps and self.lr_schedule != "constant":
            raise UsageError("decay_steps goes with lr_schedule: constant (cosine decays over the whole run)")


def select_trainable(module: torch.nn.Module, patterns: list[str] | None) -> None:
    """Train only the parameters whose names match one of ``patterns`` (all when ``None``)."""
    if patterns is None:
        return
    regexes = [re.compile(p) for p in patterns]
    for name, p in module.named_parameters():
        p.requires_grad_(any(r.search(name) for r in regexes))


def build_optimizer(params: list[torch.nn.Parameter], cfg: OptimConfig, total_steps: int
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over ``params`` and its per-step schedule over ``total_steps``."""
    fused = cfg.fused_adamw
    if fused is None:
        fused = bool(params) and all(p.is_cuda for p in params)
    kw = dict(lr=cfg.learning_rate, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, eps=cfg.adam_epsilon)
    if cfg.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(params, **kw)
    else:
        optimizer = torch.optim.AdamW(params, **kw, fused=fused or None)
    if cfg.decay_steps:
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, partial(_stable_decay, cfg=cfg,
                                                                                 total=max(1, total_steps)))
    scheduler = get_scheduler(SCHEDULES[cfg.lr_schedule], optimizer, num_warmup_steps=cfg.warmup_steps,
                              num_training_steps=max(1, total_steps))
    return optimizer, scheduler


def _stable_decay(step: int, cfg: OptimConfig, total: int) -> float:
    """Warmup-stable-decay: linear warmup, constant, then linear to ``min_lr_fraction`` at step ``total``."""
    if step < cfg.warmup_steps:
        return step / cfg.warmup_steps
    start = total - cfg.decay_steps
    if step < start:
        return 1.0
    progress = min(1.0, (step + 1 - start) / cfg.decay_steps)  # the last step (total - 1) trains at the minimum
    return 1.0 - (1.0 - cfg.min_lr_fraction) * progress
