"""The plain-PyTorch training loop of the toy recipes (toy base, personalisation): AdamW steps under
diffusers' warmup + cosine schedule, a progress bar with the loss."""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.optimization import get_scheduler
from tqdm import tqdm


def train_steps(desc: str, steps: int, optimizer: torch.optim.Optimizer, loss_fn: Callable[[], torch.Tensor],
                warmup: int = 100, clip_norm: float | None = None) -> None:
    """Run ``steps`` optimizer steps of ``loss_fn()``; the LR warms up over ``warmup`` steps, then decays
    to 0 (cosine). ``clip_norm`` clips the gradients of every optimised parameter."""
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=warmup, num_training_steps=max(1, steps))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    bar = tqdm(range(steps), desc=desc, unit="step")
    for _ in bar:
        loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, clip_norm)
        optimizer.step()
        scheduler.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
