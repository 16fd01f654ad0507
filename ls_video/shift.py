"""The parameter-free temporal shift (TSM, Lin et al. 2019; used by Latent-Shift, An et al. 2023).

Frames are folded into the batch: the input is ``(B*F, C, H, W)`` with the ``F`` frames of one
clip adjacent. Channels ``[0, n)`` take their value from the previous frame (shift forward in
time), channels ``[n, 2n)`` from the next frame (shift backward), the rest stay. Missing
neighbours at the clip ends are zeros, never wrapped around, unless ``circular=True`` (a loop:
frame 0's previous frame is the last one and the last frame's next is frame 0, ``torch.roll`` of
the moved channels; a sampling switch, :func:`ls_video.unet.using_frames`). With ``F == 1`` it is
the identity.

The shift is one kernel: one Triton launch on CUDA (:mod:`ls_video.shift_triton`), a few slice
copies elsewhere; its gradient is its adjoint (the same shift with the two directions swapped),
and the in-place form (the ``conv1`` hook's, in sampling and training) moves only the ``2n`` shifted
channels. Eager code therefore
pays one launch per shifted block. The kernels are also registered as operators,
``torch.ops.ls_video.temporal_shift`` / ``temporal_shift_`` (``torch.library`` custom ops with a
fake implementation and the adjoint as autograd formula).
Under ``torch.compile`` both public functions use a mutation-free ``torch.cat`` form instead,
which inductor fuses into the neighbouring kernels.
"""

from __future__ import annotations

import torch

from ls_video.errors import UsageError

_LIB = "ls_video"


def shift_channels(num_channels: int, fraction: float) -> int:
    """Number of channels shifted in each direction for ``fraction`` (e.g. 1/8 of 320 -> 40)."""
    if not 0.0 <= fraction <= 0.5:
        raise UsageError(f"shift fraction must be in [0, 0.5] (each direction), got {fraction}")
    return int(num_channels * fraction)


def _frames_view(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    bf, c, h, w = x.shape
    if bf % num_frames:
        raise ValueError(f"leading dim {bf} is not a multiple of num_frames={num_frames}")
    # Splitting dim 0 is a free view for any strides, so channels_last inputs stay channels_last.
    return x.view(bf // num_frames, num_frames, c, h, w)


# ----------------------------------------------------------------------------- reference (torch) forms
def _shift_functional(x: torch.Tensor, num_frames: int, n: int) -> torch.Tensor:
    """The shift without mutation (``torch.cat``), for ``torch.compile`` to fuse into one kernel."""
    src = _frames_view(x, num_frames)
    zero = torch.zeros_like(src[:, :1, :n])
    fwd = torch.cat([zero, src[:, :-1, :n]], dim=1)
    bwd = torch.cat([src[:, 1:, n : 2 * n], zero], dim=1)
    return torch.cat([fwd, bwd, src[:, :, 2 * n :]], dim=2).reshape(x.shape)


def _shift_slices(x: torch.Tensor, num_frames: int, n: int, reverse: bool) -> torch.Tensor:
    """Out-of-place shift by slice copies; ``reverse`` swaps the directions (the adjoint)."""
    src = _frames_view(x, num_frames)
    out = torch.empty_like(src)
    fwd, bwd = (slice(n, 2 * n), slice(0, n)) if reverse else (slice(0, n), slice(n, 2 * n))
    out[:, 1:, fwd] = src[:, :-1, fwd]  # frame t reads frame t-1 (zeros at t=0)
    out[:, :1, fwd] = 0
    out[:, :-1, bwd] = src[:, 1:, bwd]  # frame t reads frame t+1 (zeros at t=F-1)
    out[:, -1:, bwd] = 0
    out[:, :, 2 * n :] = src[:, :, 2 * n :]
    return out.view(x.shape)


def _shift_slices_(x: torch.Tensor, num_frames: int, n: int) -> None:
    """In-place shift by slice copies (only the ``2n`` moved channels are touched).

    One copy of the moved channels, then two writes and two zero fills: five operators, as many as the
    out-of-place form (on a busy CPU each operator's thread sync costs more than its bytes)."""
    v = _frames_view(x, num_frames)
    moved = v[:, :, : 2 * n].clone()
    v[:, 1:, :n] = moved[:, :-1, :n]
    v[:, :1, :n] = 0
    v[:, :-1, n : 2 * n] = moved[:, 1:, n : 2 * n]
    v[:, -1:, n : 2 * n] = 0


def _shift_circular(x: torch.Tensor, num_frames: int, n: int, reverse: bool = False) -> torch.Tensor:
    """Out-of-place circular shift: ``torch.roll`` of the moved channels over frames (``reverse``: the adjoint).

    The torch path on every device (the Triton kernels only zero-pad); differentiable as it is (autograd
    rolls back), and mutation-free enough for ``torch.compile`` (a clone and two slice writes)."""
    src = _frames_view(x, num_frames)
    out = src.clone()  # (keeps x's memory format)
    step = -1 if reverse else 1
    out[:, :, :n] = src[:, :, :n].roll(step, dims=1)  # frame t reads frame t-1 (frame F-1 at t=0)
    out[:, :, n : 2 * n] = src[:, :, n : 2 * n].roll(-step, dims=1)  # frame t reads t+1 (frame 0 at t=F-1)
    return out.view(x.shape)


def _shift_circular_(x: torch.Tensor, num_frames: int, n: int) -> None:
    """In-place circular shift: only the ``2n`` moved channels are written."""
    v = _frames_view(x, num_frames)
    moved = v[:, :, : 2 * n].clone()
    v[:, :, :n] = moved[:, :, :n].roll(1, dims=1)
    v[:, :, n : 2 * n] = moved[:, :, n:].roll(-1, dims=1)


# ----------------------------------------------------------------------------- kernels
def _kernel(x: torch.Tensor, num_frames: int, n: int, reverse: bool) -> torch.Tensor:
    """Out-of-place shift on ``x``'s device: one Triton launch on CUDA, slice copies elsewhere."""
    if x.is_cuda:
        from ls_video import shift_triton

        if shift_triton.supports(x):
            return shift_triton.shift(x, num_frames, n, reverse)
    return _shift_slices(x, num_frames, n, reverse)


def _kernel_(x: torch.Tensor, num_frames: int, n: int) -> None:
    """In-place shift on ``x``'s device."""
    if x.is_cuda:
        from ls_video import shift_triton

        if shift_triton.supports(x):
            return shift_triton.shift_(x, num_frames, n)
    _shift_slices_(x, num_frames, n)


class _Shift(torch.autograd.Function):
    """The eager autograd path: the kernel forward, its adjoint backward (a thin wrapper, see below)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, num_frames: int, n: int) -> torch.Tensor:
        ctx.num_frames, ctx.n = num_frames, n
        return _kernel(x, num_frames, n, False)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple:
        return _kernel(grad, ctx.num_frames, ctx.n, True), None, None


class _ShiftInPlace(torch.autograd.Function):
    """The training form of the ``conv1`` hook: ``x`` shifted in place (only the ``2n`` moved channels are
    written, no new tensor), the adjoint (out of place) in backward.

    Only for an activation nothing else reads and whose producer does not keep it for its own backward
    (SiLU keeps its input): if one did, autograd's version check raises at backward, it never goes wrong
    silently.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, num_frames: int, n: int) -> torch.Tensor:
        ctx.num_frames, ctx.n = num_frames, n
        _kernel_(x, num_frames, n)
        ctx.mark_dirty(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple:
        return _kernel(grad, ctx.num_frames, ctx.n, True), None, None


# ----------------------------------------------------------------------------- the operators
# ``torch.ops.ls_video.temporal_shift`` / ``temporal_shift_``: the same kernels as registered operators,
# with a fake implementation and the adjoint as autograd formula, for tracing, export and
# ``torch.library.opcheck``. The U-Net hooks call the kernels through ``_Shift`` instead: the Python
# custom-op dispatch costs 40-100 us of host time per call (measured on a 2-core CPU), which is the
# whole cost of the shift on a launch-bound GPU step.
@torch.library.custom_op(f"{_LIB}::temporal_shift", mutates_args=())
def _shift_op(x: torch.Tensor, num_frames: int, n: int, reverse: bool) -> torch.Tensor:
    return _kernel(x, num_frames, n, reverse)


@_shift_op.register_fake
def _(x: torch.Tensor, num_frames: int, n: int, reverse: bool) -> torch.Tensor:
    return torch.empty_like(x)


def _setup_context(ctx, inputs: tuple, output: torch.Tensor) -> None:
    _, ctx.num_frames, ctx.n, ctx.reverse = inputs


def _backward(ctx, grad: torch.Tensor) -> tuple:
    return _shift_op(grad, ctx.num_frames, ctx.n, not ctx.reverse), None, None, None


_shift_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op(f"{_LIB}::temporal_shift_", mutates_args=("x",))
def _shift_inplace_op(x: torch.Tensor, num_frames: int, n: int) -> None:
    _kernel_(x, num_frames, n)


# ----------------------------------------------------------------------------- public functions
def shift_frames(x: torch.Tensor, num_frames: int, n: int, in_place: bool = False,
                 circular: bool = False) -> torch.Tensor:
    """The hot path of the U-Net hooks: shift ``n`` channels each way, no argument checks.

    ``in_place`` writes only the moved channels into ``x`` (when nothing else reads ``x``), also under
    autograd (see ``_ShiftInPlace``). Under ``torch.compile`` the mutation-free form is traced instead,
    so inductor can fuse it. ``circular`` wraps the clip ends around (a loop) on the torch path
    (``torch.roll``) on every device; under autograd it is always out of place.
    """
    if circular:
        if in_place and not (x.requires_grad and torch.is_grad_enabled()) and not torch.compiler.is_compiling():
            _shift_circular_(x, num_frames, n)
            return x
        return _shift_circular(x, num_frames, n)
    if torch.compiler.is_compiling():
        return _shift_functional(x, num_frames, n)
    tracked = x.requires_grad and torch.is_grad_enabled()
    if in_place:
        if tracked:
            return _ShiftInPlace.apply(x, num_frames, n)
        _kernel_(x, num_frames, n)
        return x
    if tracked:
        return _Shift.apply(x, num_frames, n)
    return _kernel(x, num_frames, n, False)


def temporal_shift(x: torch.Tensor, num_frames: int, fraction: float = 0.125,
                   circular: bool = False) -> torch.Tensor:
    """Shift ``fraction`` of the channels one frame forward and as many one frame backward.

    Args:
        x: ``(B*F, C, H, W)`` features, frames of a clip adjacent (any float dtype, any memory format).
        num_frames: ``F``; must divide the leading dimension.
        fraction: share of channels moved in each direction (``1/8`` forward + ``1/8`` backward).
        circular: the clip is a loop: the first frame's previous frame is the last (``torch.roll``), not zeros.

    Returns:
        A new tensor of the same shape, dtype and memory format (``x`` itself when nothing moves).
    """
    n = shift_channels(x.shape[1], fraction)
    if num_frames == 1 or n == 0:
        return x
    _frames_view(x, num_frames)  # one clear error before any kernel
    return shift_frames(x, num_frames, n, circular=circular)


def temporal_shift_(x: torch.Tensor, num_frames: int, fraction: float = 0.125,
                    circular: bool = False) -> torch.Tensor:
    """In-place :func:`temporal_shift` for inference: only the ``2n`` moved channels are written.

    Only for tensors nothing else reads afterwards (e.g. the activation right before a convolution)
    and never under autograd. Under ``torch.compile`` it returns a new tensor instead.
    """
    n = shift_channels(x.shape[1], fraction)
    if num_frames == 1 or n == 0:
        return x
    if torch.is_grad_enabled() and x.requires_grad and not torch.compiler.is_compiling():
        raise RuntimeError("temporal_shift_ is for inference; use temporal_shift under autograd")
    _frames_view(x, num_frames)
    return shift_frames(x, num_frames, n, in_place=True, circular=circular)
