"""Temporal mixing for a diffusers ``UNet2DConditionModel``.

``shift`` (Latent-Shift) is installed as a forward pre-hook on ``conv1`` of every ``ResnetBlock2D``
(down, mid and up blocks): it acts on the residual branch after ``norm1`` + activation, right before
the first convolution, as TSM's residual shift (``shift_placement="input"`` shifts the block input
instead, skip path included). Skip paths and attention are untouched. No module, parameter or buffer
is added, so ``state_dict`` keys and parameter counts stay those of the diffusers U-Net: Stable
Diffusion weights load unchanged and a trained U-Net saves with plain ``save_pretrained``. The
settings travel next to it in ``latent_shift.json``.

The baselines of the ablation (``temporal_conv``, ``temporal_attention``) add zero-initialised
layers instead; they live in :mod:`ls_video.temporal_layers`.

Outside the U-Net videos are ``(B, F, C, H, W)``; :func:`video_unet_forward` folds frames into
the batch, tells the hooks ``F`` for that call only (:func:`frames`), and unfolds the result.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.resnet import ResnetBlock2D, TemporalConvLayer
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from einops import rearrange

from ls_video.compile import guard_hooks
from ls_video.errors import UsageError
from ls_video.frame_state import FrameState, make_checkpointing_frame_aware
from ls_video.shift import shift_channels, shift_frames
from ls_video.temporal_layers import (
    AddedLayerHook,
    remove_added_layers,
    temporal_attention_like,
)

TEMPORAL_CONFIG_NAME = "latent_shift.json"
TemporalMixing = Literal["shift", "none", "temporal_conv", "temporal_attention"]
ShiftPlacement = Literal["residual", "input"]
MIXINGS = ("shift", "none", "temporal_conv", "temporal_attention")
KEEPS_INPUT = (torch.nn.SiLU, torch.nn.Mish, torch.nn.GELU)  # activations whose backward reads their input only


@dataclass
class TemporalConfig:
    """How frames talk to each other inside the U-Net.

    Args:
        temporal_mixing: ``"shift"`` (Latent-Shift), ``"none"`` (frames independent, an image model),
            or the added-layer baselines ``"temporal_conv"`` / ``"temporal_attention"``.
        shift_fraction: share of channels shifted in each direction (1/8 forward + 1/8 backward).
        shift_placement: ``"residual"`` (before ``conv1``, the default) or ``"input"`` (the whole block
            input, skip path included; TSM's in-place shift).
        deep_shift_frames: how many frames the shift moves in the lowest-resolution blocks (the last down
            block, the mid block, the first up block); 1 (the default) moves one frame everywhere. Larger
            values widen the temporal reach of one U-Net pass without a parameter (docs/RESULTS.md, 16 frames).
    """

    temporal_mixing: TemporalMixing = "shift"
    shift_fraction: float = 0.125
    shift_placement: ShiftPlacement = "residual"
    deep_shift_frames: int = 1

    def __post_init__(self) -> None:
        if self.temporal_mixing not in MIXINGS:
            raise UsageError(f"temporal_mixing must be one of {', '.join(MIXINGS)}; got {self.temporal_mixing!r}")
        if self.shift_placement not in ("residual", "input"):
            raise UsageError(f"shift_placement must be 'residual' or 'input', got {self.shift_placement!r}")
        shift_channels(1, self.shift_fraction)  # validates the range
        if self.deep_shift_frames < 1:
            raise ValueError(f"deep_shift_frames must be >= 1, got {self.deep_shift_frames}")

    def save(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, TEMPORAL_CONFIG_NAME), "w") as f:
            json.dump(asdict(self), f, indent=2)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> TemporalConfig | None:
        """Read ``directory/latent_shift.json``; ``None`` when absent (e.g. a plain SD U-Net)."""
        path = os.path.join(directory, TEMPORAL_CONFIG_NAME)
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            return cls(**json.load(f))


def frames(unet: torch.nn.Module, num_frames: int) -> contextlib.AbstractContextManager[None]:
    """Within the block, calls of ``unet`` treat their batch as clips of ``num_frames`` frames."""
    temporal = getattr(unet, "_latent_shift", None)
    return temporal.state.frames(num_frames) if temporal is not None else contextlib.nullcontext()


class _ShiftHook:
    """Forward pre-hook: shift the hooked module's first input over frames.

    ``n`` (channels moved each way) is fixed when the hook is installed, so a call is one operator:
    nothing is validated here (:func:`video_unet_forward` folds frames, so ``F`` divides the batch).
    ``in_place`` (the ``conv1`` hook): the input is the fresh activation that only ``conv1`` reads, so
    it is shifted in place (no full-size copy). Under autograd too (``in_place_grad``) when the block's
    activation keeps its input, not its output, for backward (SiLU, as in every SD U-Net; not ReLU).
    The ``"input"`` placement shifts the block input, which the skip path reads too: out of place.
    """

    def __init__(self, state: FrameState, n: int, in_place: bool = False, frames_moved: int = 1,
                 in_place_grad: bool = False) -> None:
        self.state = state
        self.n = n
        self.in_place = in_place
        self.in_place_grad = in_place and in_place_grad  # also under autograd (the producer keeps its input)
        self.frames_moved = frames_moved  # a shift of k frames is k one-frame shifts (zeros enter at the ends)

    def __call__(self, module: torch.nn.Module, args: tuple) -> tuple | None:
        num_frames = self.state.num_frames
        if num_frames == 1 or self.n == 0:
            return None  # the identity: leave the input as it is
        x = args[0]
        in_place = self.in_place_grad if torch.is_grad_enabled() else self.in_place
        for _ in range(self.frames_moved):
            x = shift_frames(x, num_frames, self.n, in_place)
        return (x, *args[1:])


class _Temporal:
    """What :func:`apply_temporal_mixing` attaches to a U-Net (a plain attribute, not a module)."""

    def __init__(self, config: TemporalConfig, state: FrameState, handles: list) -> None:
        self.config = config
        self.state = state
        self.handles = handles  # one per hooked block


def apply_temporal_mixing(
    unet: UNet2DConditionModel, config: TemporalConfig | None = None
) -> UNet2DConditionModel:
    """Install (or replace) temporal mixing on ``unet`` in place and return it.

    Added layers (``temporal_conv`` / ``temporal_attention``) are created zero-initialised on the
    U-Net's device and dtype; an earlier mixing's hooks and added layers are removed first. Dynamo is
    told to guard module hooks (:func:`ls_video.compile.guard_hooks`), so a user's own
    ``torch.compile(unet)`` never reuses the graph of another U-Net of the same config without them.
    Gradient checkpointing, on now or enabled later with ``unet.enable_gradient_checkpointing()``,
    recomputes blocks at the frame count of their forward call
    (:func:`ls_video.frame_state.make_checkpointing_frame_aware`).
    """
    config = config or TemporalConfig()
    guard_hooks()
    old = getattr(unet, "_latent_shift", None)
    if old is not None:
        for handle in old.handles:
            handle.remove()
    remove_added_layers(unet)
    state = old.state if old is not None else FrameState()
    handles = []
    ref = next(unet.parameters())
    deep = set()  # the lowest-resolution blocks, where the shift may move more than one frame
    if config.deep_shift_frames > 1:
        deep = {id(m) for part in (unet.down_blocks[-1], unet.mid_block, unet.up_blocks[0]) for m in part.modules()}
    for module in list(unet.modules()):
        if config.temporal_mixing == "shift" and isinstance(module, ResnetBlock2D):
            residual = config.shift_placement == "residual"
            target = module.conv1 if residual else module
            n = shift_channels(module.in_channels, config.shift_fraction)  # (conv1 may be a LoRA wrapper)
            moved = config.deep_shift_frames if id(module) in deep else 1
            hook = _ShiftHook(state, n, in_place=residual, frames_moved=moved,
                              in_place_grad=isinstance(module.nonlinearity, KEEPS_INPUT))
            handles.append(target.register_forward_pre_hook(hook))
        elif config.temporal_mixing == "temporal_conv" and isinstance(module, ResnetBlock2D):
            with torch.device(ref.device):
                module.temporal_conv = TemporalConvLayer(module.conv2.out_channels,
                                                         norm_num_groups=module.norm2.num_groups)
            module.temporal_conv.to(ref.dtype)
            handles.append(module.register_forward_hook(AddedLayerHook(state, "temporal_conv")))
        elif config.temporal_mixing == "temporal_attention" and isinstance(module, Transformer2DModel):
            with torch.device(ref.device):
                module.temporal_attention = temporal_attention_like(module)
            torch.nn.Module.to(module.temporal_attention, ref.dtype)  # (ModelMixin.to warns on dtype casts)
            handles.append(module.register_forward_hook(AddedLayerHook(state, "temporal_attention")))
    unet._latent_shift = _Temporal(config, state, handles)
    make_checkpointing_frame_aware(unet, state)
    return unet


def get_temporal_config(unet: torch.nn.Module) -> TemporalConfig | None:
    """The temporal settings installed on ``unet``, or ``None`` for a plain image U-Net."""
    temporal = getattr(unet, "_latent_shift", None)
    return temporal.config if temporal is not None else None


def num_shift_hooks(unet: torch.nn.Module) -> int:
    """How many blocks carry a temporal hook (shift or added layer; for tests and logs)."""
    temporal = getattr(unet, "_latent_shift", None)
    return len(temporal.handles) if temporal is not None else 0


def video_unet_forward(
    unet: UNet2DConditionModel,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
) -> torch.Tensor:
    """Run the U-Net on a video batch.

    Args:
        latents: ``(B, F, C, h, w)`` noisy latents.
        timesteps: ``(B,)`` one timestep per clip (or a scalar), shared by its frames.
        encoder_hidden_states: ``(B, L, D)`` text embeddings, shared by the frames of a clip.

    Returns:
        ``(B, F, C, h, w)`` model output (noise or v, as the scheduler's ``prediction_type``).
    """
    b, f = latents.shape[:2]
    x = rearrange(latents, "b f c h w -> (b f) c h w")
    timesteps = torch.as_tensor(timesteps, device=latents.device)
    if timesteps.ndim == 0:
        timesteps = timesteps.expand(b)
    t = timesteps.repeat_interleave(f)
    context = encoder_hidden_states.repeat_interleave(f, dim=0)
    with frames(unet, f):
        out = unet(x, t, encoder_hidden_states=context, return_dict=False)[0]
    return rearrange(out, "(b f) c h w -> b f c h w", b=b)
