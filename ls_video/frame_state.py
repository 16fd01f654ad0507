"""The frame count a U-Net's temporal hooks share, and gradient checkpointing that keeps it.

Inside the U-Net a video is a batch ``(B·F, C, h, w)`` with no trace of ``F``. The hooks that
:func:`ls_video.unet.apply_temporal_mixing` installs (the shift, the added layers of
:mod:`ls_video.temporal_layers`) read ``F`` from one :class:`FrameState` per U-Net: 1 (a batch of
images) except inside :meth:`FrameState.using_frames`. The count is per thread, so threads sampling
clips of different lengths with one U-Net at the same time each get what they would get alone. So is
the loop switch (``circular``: the clip's ends are neighbours, :func:`ls_video.shift.shift_frames`).

Gradient checkpointing runs a block again during backward, after that ``using_frames`` block has ended, so
the recomputation would see ``F = 1`` and compute other activations than the forward did (wrong
gradients, no error). :class:`FrameAwareCheckpoint` wraps a checkpointing function so that the block it
checkpoints runs, both times, at the frame count of its forward call. Installing the temporal mixing
wraps the function once (:func:`make_checkpointing_frame_aware`); nothing is checked per call.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import torch

CheckpointFunction = Callable[..., object]  # diffusers' ``gradient_checkpointing_func(module, *args)``


class FrameState(threading.local):
    """Frame count of the batch currently inside the U-Net, shared by all its temporal hooks.

    A ``threading.local``: each thread has its own count (1 until it enters :meth:`using_frames`), so
    concurrent calls of one U-Net never read each other's ``F``. A copy (``copy.deepcopy`` of the U-Net)
    or a pickled U-Net starts at 1.
    """

    def __init__(self) -> None:
        self.num_frames = 1
        self.circular = False  # the clip is a loop (the shift wraps around its ends)

    def __deepcopy__(self, memo: dict) -> FrameState:
        return type(self)()

    def __reduce__(self) -> tuple:
        return (type(self), ())

    @contextlib.contextmanager
    def using_frames(self, num_frames: int, circular: bool = False) -> Iterator[None]:
        """Within the block this thread's batches are clips of ``num_frames`` frames (loops when ``circular``);
        the previous count and switch come back after."""
        previous = self.num_frames, self.circular
        self.num_frames, self.circular = num_frames, circular
        try:
            yield
        finally:
            self.num_frames, self.circular = previous


def checkpoint(module: Callable, *args: object) -> object:
    """diffusers' default checkpointing function (non-reentrant ``torch.utils.checkpoint``)."""
    return torch.utils.checkpoint.checkpoint(module, *args, use_reentrant=False)


class _AtFrames:
    """``module`` called at a fixed frame count (and loop switch): what the checkpointing function runs and
    reruns."""

    def __init__(self, module: Callable, state: FrameState, num_frames: int, circular: bool = False) -> None:
        self.module = module
        self.state = state
        self.num_frames = num_frames
        self.circular = circular

    def __call__(self, *args: object, **kwargs: object) -> object:
        with self.state.using_frames(self.num_frames, self.circular):
            return self.module(*args, **kwargs)


class FrameAwareCheckpoint:
    """A checkpointing function (``inner``) whose blocks run at the frame count of their forward call.

    An object, not a closure, so that ``copy.deepcopy(unet)`` gives the copy one bound to its own state.
    """

    def __init__(self, state: FrameState, inner: CheckpointFunction = checkpoint) -> None:
        self.state = state
        self.inner = inner

    def __call__(self, module: torch.nn.Module, *args: object) -> object:
        return self.inner(_AtFrames(module, self.state, self.state.num_frames, self.state.circular), *args)


class _EnableFrameAware:
    """``unet.enable_gradient_checkpointing`` of a U-Net with temporal mixing: diffusers' method, with the
    function it is given (the default when none) made frame-aware."""

    def __init__(self, unet: torch.nn.Module, state: FrameState) -> None:
        self.unet = unet
        self.state = state

    def __call__(self, gradient_checkpointing_func: CheckpointFunction | None = None) -> None:
        func = FrameAwareCheckpoint(self.state, gradient_checkpointing_func or checkpoint)
        type(self.unet).enable_gradient_checkpointing(self.unet, func)


def make_checkpointing_frame_aware(unet: torch.nn.Module, state: FrameState) -> None:
    """Make ``unet``'s gradient checkpointing read ``state``, now and whenever it is enabled later.

    Blocks already checkpointing get their function wrapped (or rebound to ``state``);
    ``unet.enable_gradient_checkpointing(...)`` wraps the function it sets. Called once, at install.
    """
    for module in unet.modules():
        func = getattr(module, "_gradient_checkpointing_func", None)
        if func is None or not getattr(module, "gradient_checkpointing", False):
            continue
        inner = func.inner if isinstance(func, FrameAwareCheckpoint) else func
        module._gradient_checkpointing_func = FrameAwareCheckpoint(state, inner)
    if hasattr(type(unet), "enable_gradient_checkpointing"):
        unet.enable_gradient_checkpointing = _EnableFrameAware(unet, state)
