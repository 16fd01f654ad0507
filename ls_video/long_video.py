"""Long videos and loops: denoising a clip in overlapping frame windows, FreeNoise noise rescheduling.

The shift has no positional encoding, so a model trained on 8 or 16 frames denoises any ``num_frames`` in
one pass, memory and time linear in frames. When a clip does not fit at once, :class:`ContextWindows`
bounds the frames per U-Net call: at every denoising step the U-Net runs on windows of ``context_length``
frames whose starts are ``context_stride`` frames apart (the last one ends at the clip's end), one window at
a time, and each frame's prediction is the weighted mean of its windows' predictions (``weighting_scheme``:
``"pyramid"`` weights a window's middle frames most, ``"flat"`` all alike). The shift couples neighbours, so
windows must overlap (``context_stride <= context_length``) and a window's edge frames see zeros where the clip
goes on; the blend lets the frames of the middle of other windows outweigh them. The names, the window
layout and the weights are those of diffusers' FreeNoise (``AnimateDiffPipeline.enable_free_noise``), here
applied to the whole U-Net instead of its temporal attention.

``loop=True`` makes the clip a loop: the shift is circular (:func:`ls_video.unet.using_frames`) and windows
wrap around the clip's end, so the last frames blend into the first.

FreeNoise's noise rescheduling (``noise_type="shuffle_context"``, the default as in diffusers): the initial
noise of frame ``i >= context_length`` is that of a frame ``context_length`` earlier, shuffled within blocks of
``context_stride`` frames, so every window starts from a permutation of the first window's noise;
``"repeat_context"`` repeats the first window unshuffled, ``"random"`` leaves the noise as drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ls_video.errors import UsageError
from ls_video.unet import video_unet_forward

WEIGHTING_SCHEMES = ("flat", "pyramid")
NOISE_TYPES = ("shuffle_context", "repeat_context", "random")


@dataclass(frozen=True)
class ContextWindows:
    """Denoise in overlapping windows of ``context_length`` frames, ``context_stride`` frames apart.

    Args:
        context_length: frames per U-Net call (per video; with guidance the batch holds two copies).
        context_stride: frames between the starts of consecutive windows (``<= context_length``: every frame
            is covered; the overlap is ``context_length - context_stride``).
        weighting_scheme: ``"pyramid"`` (a window's frames weigh ``1, 2, ..., 2, 1``) or ``"flat"``.
        noise_type: ``"shuffle_context"``, ``"repeat_context"`` or ``"random"`` (see the module docstring).
    """

    context_length: int = 16
    context_stride: int = 4
    weighting_scheme: str = "pyramid"
    noise_type: str = "shuffle_context"

    def __post_init__(self) -> None:
        for name in ("context_length", "context_stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{name} must be an integer >= 1, got {value!r}")
        if self.context_stride > self.context_length:
            raise UsageError(f"context_stride ({self.context_stride}) must be <= context_length "
                             f"({self.context_length}): frames between windows would never be denoised")
        if self.weighting_scheme not in WEIGHTING_SCHEMES:
            raise UsageError(f"weighting_scheme must be one of {', '.join(WEIGHTING_SCHEMES)}, "
                             f"got {self.weighting_scheme!r}")
        if self.noise_type not in NOISE_TYPES:
            raise UsageError(f"noise_type must be one of {', '.join(NOISE_TYPES)}, got {self.noise_type!r}")

    def windows(self, num_frames: int, loop: bool = False) -> list[list[int]]:
        """The frame indices of each window, in order; one window of all frames when they fit in one.

        Open clips: starts ``0, stride, ...`` while a window fits, plus one ending at the last frame (diffusers'
        layout). Loops: starts ``0, stride, ...`` below ``num_frames``, indices taken modulo ``num_frames``.
        """
        length, stride = self.context_length, self.context_stride
        if num_frames <= length:
            return [list(range(num_frames))]
        if loop:
            return [[(s + k) % num_frames for k in range(length)] for s in range(0, num_frames, stride)]
        starts = list(range(0, num_frames - length + 1, stride))
        if starts[-1] + length < num_frames:
            starts.append(num_frames - length)
        return [list(range(s, s + length)) for s in starts]

    def weights(self, length: int) -> torch.Tensor:
        """``(length,)`` blending weights of a window's frames (diffusers' FreeNoise ``pyramid`` / ``flat``)."""
        if self.weighting_scheme == "flat":
            return torch.ones(length)
        half = torch.arange(1, (length + 1) // 2 + 1, dtype=torch.float32)  # pyramid: 1, 2, ..., 2, 1
        return torch.cat([half, half.flip(0)[length % 2 :]])


def windowed_forward(unet: torch.nn.Module, latents: torch.Tensor, timestep: torch.Tensor,
                     encoder_hidden_states: torch.Tensor, context: ContextWindows | None = None,
                     loop: bool = False) -> torch.Tensor:
    """:func:`ls_video.unet.video_unet_forward` on ``(B, F, C, h, w)`` latents, in windows when ``context`` is given.

    Each window is one U-Net call of ``B * context_length`` frames (a clip of its own: the shift zero-pads its
    ends, circular only when one window is the whole loop); each frame's output is the mean of its windows'
    outputs weighted by ``context.weights``. Without ``context`` it is one call on all frames.
    """
    num_frames = latents.shape[1]
    if context is None:
        return video_unet_forward(unet, latents, timestep, encoder_hidden_states, circular=loop)
    windows = context.windows(num_frames, loop)
    if len(windows) == 1 and len(windows[0]) == num_frames:
        loop_window = loop  # the whole clip in one window: a loop stays a loop
    else:
        loop_window = False
    weights = context.weights(len(windows[0])).to(latents.device, torch.float32)
    total = torch.zeros(num_frames, device=latents.device)
    index = [torch.tensor(w, device=latents.device) for w in windows]
    for idx in index:
        total.index_add_(0, idx, weights)
    out = None
    for k, idx in enumerate(index):
        if k and latents.is_cuda:  # CUDA graphs (compile=True): this replay may reuse the last window's buffer,
            torch.compiler.cudagraph_mark_step_begin()  # which was blended into ``out`` already; a no-op otherwise
        context_rows = encoder_hidden_states[:, idx] if encoder_hidden_states.ndim == 4 else encoder_hidden_states
        pred = video_unet_forward(unet, latents[:, idx], timestep, context_rows, circular=loop_window)
        share = (weights / total[idx]).to(pred.dtype).view(1, -1, 1, 1, 1)  # 1 exactly for a frame in one window
        if out is None:
            out = torch.zeros_like(pred[:, :1]).expand(-1, num_frames, -1, -1, -1).clone()
        out.index_add_(1, idx, pred * share)
    return out


def _generators(generator: torch.Generator | Sequence[torch.Generator] | None, batch: int) -> list:
    if isinstance(generator, Sequence):
        if len(generator) != batch:
            raise UsageError(f"got {len(generator)} generators for {batch} videos")
        return list(generator)
    return [generator] * batch


def reschedule_noise(noise: torch.Tensor, context: ContextWindows | None,
                     generator: torch.Generator | Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """FreeNoise's initial noise for ``(B, F, C, h, w)`` ``noise`` (a new tensor; ``noise`` itself when unchanged).

    ``shuffle_context``: for ``i = context_length, context_length + stride, ...`` frames ``[i, i + stride)`` get
    the noise of frames ``[i - context_length, i - context_length + stride)`` in an order drawn from the video's
    generator (diffusers' ``_prepare_latents_free_noise``); ``repeat_context``: the first ``context_length``
    frames repeated; ``random`` or no ``context``: unchanged.
    """
    if context is None or context.noise_type == "random" or noise.shape[1] <= context.context_length:
        return noise
    num_frames, length, stride = noise.shape[1], context.context_length, context.context_stride
    if context.noise_type == "repeat_context":
        return noise[:, torch.arange(num_frames, device=noise.device) % length]
    out = noise.clone()
    for b, gen in enumerate(_generators(generator, noise.shape[0])):
        for i in range(length, num_frames, stride):
            block = min(stride, num_frames - i)
            device = gen.device if gen is not None else "cpu"
            order = torch.randperm(stride, generator=gen, device=device)[:block].to(noise.device)
            out[b, i : i + block] = out[b, i - length + order]
    return out


class FreeNoiseMixin:
    """``enable_free_noise`` / ``disable_free_noise`` on a pipeline, with diffusers' AnimateDiff names.

    The settings hold for every later call until disabled; the pipeline's denoise loop passes them to
    :func:`windowed_forward` and its initial noise through :func:`reschedule_noise`.
    """

    _free_noise: ContextWindows | None = None

    def enable_free_noise(self, context_length: int = 16, context_stride: int = 4,
                          weighting_scheme: str = "pyramid", noise_type: str = "shuffle_context") -> None:
        """Denoise in windows of ``context_length`` frames ``context_stride`` apart (see :class:`ContextWindows`)."""
        self._free_noise = ContextWindows(context_length, context_stride, weighting_scheme, noise_type)

    def disable_free_noise(self) -> None:
        """Back to one U-Net call on all frames."""
        self._free_noise = None

    @property
    def free_noise_enabled(self) -> bool:
        return self._free_noise is not None
