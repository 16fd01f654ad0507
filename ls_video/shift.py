"""The parameter-free temporal shift (TSM, Lin et al. 2019; used by Latent-Shift, An et al. 2023).

Frames are folded into the batch: the input is ``(B*F, C, H, W)`` with the ``F`` frames of one
clip adjacent. Channels ``[0, n)`` take their value from the previous frame (shift forward in
time), channels ``[n, 2n)`` from the next frame (shift backward), the rest stay. Missing
neighbours at the clip ends are zeros, never wrapped around. With ``F == 1`` it is the identity.
"""

from __future__ import annotations

import torch


def shift_channels(num_channels: int, fraction: float) -> int:
    """Number of channels shifted in each direction for ``fraction`` (e.g. 1/8 of 320 -> 40)."""
    if not 0.0 <= fraction <= 0.5:
        raise ValueError(f"shift fraction must be in [0, 0.5] (each direction), got {fraction}")
    return int(num_channels * fraction)


def temporal_shift(x: torch.Tensor, num_frames: int, fraction: float = 0.125) -> torch.Tensor:
    """Shift ``fraction`` of the channels one frame forward and as many one frame backward.

    Args:
        x: ``(B*F, C, H, W)`` features, frames of a clip adjacent (any float dtype, any memory format).
        num_frames: ``F``; must divide the leading dimension.
        fraction: share of channels moved in each direction (``1/8`` forward + ``1/8`` backward).

    Returns:
        A new tensor of the same shape, dtype and memory format.
    """
    n = shift_channels(x.shape[1], fraction)
    if num_frames == 1 or n == 0:
        return x
    bf, c, h, w = x.shape
    if bf % num_frames:
        raise ValueError(f"leading dim {bf} is not a multiple of num_frames={num_frames}")
    # Splitting dim 0 is a free view for any strides, so channels_last inputs stay channels_last.
    src = x.view(bf // num_frames, num_frames, c, h, w)
    out = torch.empty_like(src)
    # forward in time: frame t reads frame t-1 (zeros at t=0)
    out[:, 1:, :n] = src[:, :-1, :n]
    out[:, :1, :n] = 0
    # backward in time: frame t reads frame t+1 (zeros at t=F-1)
    out[:, :-1, n : 2 * n] = src[:, 1:, n : 2 * n]
    out[:, -1:, n : 2 * n] = 0
    out[:, :, 2 * n :] = src[:, :, 2 * n :]
    return out.view(bf, c, h, w)
