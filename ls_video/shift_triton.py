"""Triton kernels of the temporal shift (CUDA): the whole shift in one launch.

Imported on first use by the CUDA kernels of ``ls_video::temporal_shift`` / ``temporal_shift_``
(:mod:`ls_video.shift`); machines without Triton fall back to slice copies.

A frame's ``C*H*W`` values are contiguous in memory both for contiguous (NCHW) and channels-last
(NHWC) tensors, so the kernels walk flat offsets ``o`` inside a frame and only derive the channel
(``o // (H*W)`` or ``o % C``) to decide which frame to read.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK = 1024


def _layout(x: torch.Tensor) -> int | None:
    """0 for contiguous NCHW, 1 for channels_last, ``None`` for anything else."""
    if x.is_contiguous():
        return 0
    if x.is_contiguous(memory_format=torch.channels_last):
        return 1
    return None


def supports(x: torch.Tensor) -> bool:
    """Whether the kernels handle ``x`` (4-D, contiguous or channels_last, frames under 67M values)."""
    return x.is_cuda and x.dim() == 4 and _layout(x) is not None and x[0].numel() < 65535 * _BLOCK


@triton.jit
def _shift_kernel(src, out, num_frames, frame_numel, hw, channels, n,
                  REVERSE: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    frame = tl.program_id(0)  # index in the folded batch B*F
    o = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = o < frame_numel
    c = o % channels if CHANNELS_LAST else o // hw
    first = c < n
    second = (c >= n) & (c < 2 * n)
    if REVERSE:  # the adjoint: channels [0, n) read the next frame, [n, 2n) the previous one
        dt = tl.where(first, 1, tl.where(second, -1, 0))
    else:
        dt = tl.where(first, -1, tl.where(second, 1, 0))
    t = frame % num_frames + dt
    valid = inside & (t >= 0) & (t < num_frames)
    base = frame.to(tl.int64) * frame_numel
    value = tl.load(src + base + dt.to(tl.int64) * frame_numel + o, mask=valid, other=0.0)
    tl.store(out + base + o, value, mask=inside)


@triton.jit
def _shift_inplace_kernel(x, frame_numel, hw, channels, n, NUM_FRAMES: tl.constexpr,
                          CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    clip = tl.program_id(0)
    k = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # index over the 2n moved channels x H*W
    inside = k < 2 * n * hw
    if CHANNELS_LAST:
        c = k % (2 * n)
        o = (k // (2 * n)) * channels + c
    else:
        c = k // hw
        o = k
    first = c < n  # these lanes walk frames last-to-first (read t-1), the others first-to-last (read t+1)
    base = clip.to(tl.int64) * NUM_FRAMES * frame_numel
    for i in range(NUM_FRAMES):
        t = tl.where(first, NUM_FRAMES - 1 - i, i)
        s = tl.where(first, t - 1, t + 1)
        ok = inside & (s >= 0) & (s < NUM_FRAMES)
        value = tl.load(x + base + s.to(tl.int64) * frame_numel + o, mask=ok, other=0.0)
        tl.store(x + base + t.to(tl.int64) * frame_numel + o, value, mask=inside)


def shift(x: torch.Tensor, num_frames: int, n: int, reverse: bool) -> torch.Tensor:
    """Out-of-place shift of ``(B*F, C, H, W)`` ``x`` in one kernel (``reverse``: the adjoint)."""
    out = torch.empty_like(x)  # keeps x's memory format
    bf, c, h, w = x.shape
    frame_numel = c * h * w
    grid = (bf, triton.cdiv(frame_numel, _BLOCK))
    _shift_kernel[grid](x, out, num_frames, frame_numel, h * w, c, n,
                        REVERSE=reverse, CHANNELS_LAST=_layout(x) == 1, BLOCK=_BLOCK)
    return out


def shift_(x: torch.Tensor, num_frames: int, n: int) -> None:
    """In-place shift: each program owns a column of the ``2n`` moved channels across the clip's frames."""
    bf, c, h, w = x.shape
    grid = (bf // num_frames, triton.cdiv(2 * n * h * w, _BLOCK))
    _shift_inplace_kernel[grid](x, c * h * w, h * w, c, n, NUM_FRAMES=num_frames,
                                CHANNELS_LAST=_layout(x) == 1, BLOCK=_BLOCK)
