"""The parameter-free temporal shift (TSM, Lin et al. 2019; used by Latent-Shift, An et al. 2023).

Frames are folded into the batch: the input is ``(B*F, C, H, W)`` with the ``F`` frames of one
clip adjacent. Channels ``[0, n)`` take their value from the previous frame (shift forward in
time), channels ``[n, 2n)`` from the next frame (shift backward), the rest stay. Missing
neighbours at the clip ends are zeros, never wrapped around. With ``F == 1`` it is the identity.

Cost: one output tensor in the forward pass, and one in the backward pass, which is the same shift
with the two directions swapped (its adjoint) instead of autograd's slice-by-slice gradient.
:func:`temporal_shift_` shifts in place (inference only) and allocates just the moved slices.
Under ``torch.compile`` both use a mutation-free form that inductor fuses into one kernel.
"""

from __future__ import annotations

import torch


def shift_channels(num_channels: int, fraction: float) -> int:
    """Number of channels shifted in each direction for ``fraction`` (e.g. 1/8 of 320 -> 40)."""
    if not 0.0 <= fraction <= 0.5:
        raise ValueError(f"shift fraction must be in [0, 0.5] (each direction), got {fraction}")
    return int(num_channels * fraction)


def _frames_view(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    bf, c, h, w = x.shape
    if bf % num_frames:
        raise ValueError(f"leading dim {bf} is not a multiple of num_frames={num_frames}")
    # Splitting dim 0 is a free view for any strides, so channels_last inputs stay channels_last.
    return x.view(bf // num_frames, num_frames, c, h, w)


def _shift_functional(x: torch.Tensor, num_frames: int, n: int) -> torch.Tensor:
    """The same shift without mutation (``torch.cat``), for ``torch.compile`` to fuse into one kernel."""
    src = _frames_view(x, num_frames)
    zero = torch.zeros_like(src[:, :1, :n])
    fwd = torch.cat([zero, src[:, :-1, :n]], dim=1)
    bwd = torch.cat([src[:, 1:, n : 2 * n], zero], dim=1)
    return torch.cat([fwd, bwd, src[:, :, 2 * n :]], dim=2).reshape(x.shape)


def _shift(x: torch.Tensor, num_frames: int, n: int, reverse: bool = False) -> torch.Tensor:
    """Out-of-place shift; ``reverse`` swaps the directions (the adjoint, used for gradients)."""
    src = _frames_view(x, num_frames)
    out = torch.empty_like(src)
    fwd, bwd = (slice(n, 2 * n), slice(0, n)) if reverse else (slice(0, n), slice(n, 2 * n))
    out[:, 1:, fwd] = src[:, :-1, fwd]  # frame t reads frame t-1 (zeros at t=0)
    out[:, :1, fwd] = 0
    out[:, :-1, bwd] = src[:, 1:, bwd]  # frame t reads frame t+1 (zeros at t=F-1)
    out[:, -1:, bwd] = 0
    out[:, :, 2 * n :] = src[:, :, 2 * n :]
    return out.view(x.shape)


class _TemporalShift(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, num_frames: int, n: int) -> torch.Tensor:
        ctx.num_frames, ctx.n = num_frames, n
        return _shift(x, num_frames, n)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _shift(grad, ctx.num_frames, ctx.n, reverse=True), None, None


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
    _frames_view(x, num_frames)  # validate before autograd
    if torch.compiler.is_compiling():  # inductor fuses this and differentiates it itself
        return _shift_functional(x, num_frames, n)
    if torch.is_grad_enabled() and x.requires_grad:
        return _TemporalShift.apply(x, num_frames, n)
    return _shift(x, num_frames, n)


def temporal_shift_(x: torch.Tensor, num_frames: int, fraction: float = 0.125) -> torch.Tensor:
    """In-place :func:`temporal_shift` for inference: only the two moved slices are copied.

    Only for tensors nothing else reads afterwards (e.g. the activation right before a convolution)
    and never under autograd.
    """
    n = shift_channels(x.shape[1], fraction)
    if num_frames == 1 or n == 0:
        return x
    if torch.compiler.is_compiling():  # no in-place writes inside compiled graphs
        return _shift_functional(x, num_frames, n)
    if torch.is_grad_enabled() and x.requires_grad:
        raise RuntimeError("temporal_shift_ is for inference; use temporal_shift under autograd")
    v = _frames_view(x, num_frames)
    v[:, 1:, :n] = v[:, :-1, :n].clone()
    v[:, :1, :n] = 0
    v[:, :-1, n : 2 * n] = v[:, 1:, n : 2 * n].clone()
    v[:, -1:, n : 2 * n] = 0
    return x
