"""Optimiser and learning-rate schedule of the U-Net: AdamW + diffusers' warmup schedules."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch
from diffusers.optimization import get_scheduler

SCHEDULES = {"constant": "constant_with_warmup", "cosine": "cosine"}


@dataclass
class OptimConfig:
    """AdamW and its schedule.

    Args:
        learning_rate: peak learning rate.
        betas, weight_decay, adam_epsilon: AdamW's.
        warmup_steps: linear warmup from 0 (diffusers' ``get_scheduler``).
        lr_schedule: ``constant`` after warmup, or ``cosine`` decay to 0 over the run.
        trainable_patterns: regexes over U-Net parameter names that train; ``None`` trains all (as in
            the paper). Example: ``["conv1", "conv2"]`` trains only ResNet convolutions.
        fused_adamw: fused AdamW kernel; ``None`` uses it when every trainable parameter is on a GPU.
    """

    learning_rate: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    warmup_steps: int = 500
    lr_schedule: Literal["constant", "cosine"] = "constant"
    trainable_patterns: list[str] | None = None
    fused_adamw: bool | None = None

    def __post_init__(self) -> None:
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {sorted(SCHEDULES)}, got {self.lr_schedule!r}")


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
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                                  eps=cfg.adam_epsilon, fused=fused or None)
    scheduler = get_scheduler(SCHEDULES[cfg.lr_schedule], optimizer, num_warmup_steps=cfg.warmup_steps,
                              num_training_steps=max(1, total_steps))
    return optimizer, scheduler
