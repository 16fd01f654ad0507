"""Side-by-side timing for benchmarks and the ablation: variants alternate within one run, medians compared."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str) -> float:
    """Seconds for one call of ``fn``, the device synchronised on both ends."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def alternate(variants: dict[str, Callable[[], Callable[[], object]]], reps: int, device: str,
              warmup: int = 1) -> dict[str, float]:
    """Median seconds per variant. ``variants[name]()`` prepares the model and returns the step to time.

    Rounds rotate the variants' order so slow drifts of a shared machine hit all of them alike; the
    first ``warmup`` rounds are not counted.
    """
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(reps + warmup):
        k = rep % len(names)
        for name in names[k:] + names[:k]:
            step = variants[name]()
            dt = timed(step, device)
            if rep >= warmup:
                times[name].append(dt)
    return {n: statistics.median(v) for n, v in times.items()}


def unet_pass(unet: torch.nn.Module, mixing: str, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor,
              backward: bool) -> Callable[[], Callable[[], object]]:
    """A variant for :func:`alternate`: install ``mixing`` on ``unet``, then time one forward (no grad) or
    forward + backward of ``video_unet_forward``."""
    from ls_video.unet import TemporalConfig, apply_temporal_mixing, video_unet_forward

    def setup() -> Callable[[], object]:
        apply_temporal_mixing(unet, TemporalConfig(mixing))
        unet.zero_grad(set_to_none=True)
        if backward:
            return lambda: video_unet_forward(unet, x, t, ctx).float().square().mean().backward()
        return lambda: torch.no_grad()(video_unet_forward)(unet, x, t, ctx)

    return setup
