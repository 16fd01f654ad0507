"""Temporal mixing for a diffusers ``UNet2DConditionModel`` without touching its weights.

The shift is installed as a forward pre-hook on ``conv1`` of every ``ResnetBlock2D`` (down, mid
and up blocks): it acts on the residual branch after ``norm1`` + activation, right before the
first convolution, as TSM's residual shift. Skip paths and attention are untouched. No module,
parameter or buffer is added, so ``state_dict`` keys and parameter counts stay those of the
diffusers U-Net: Stable Diffusion weights load unchanged and a trained U-Net saves with plain
``save_pretrained``. The settings travel next to it in ``latent_shift.json``.

Outside the U-Net videos are ``(B, F, C, H, W)``; :func:`video_unet_forward` folds frames into
the batch, tells the hooks ``F``, and unfolds the result.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.resnet import ResnetBlock2D
from einops import rearrange

from ls_video.shift import shift_channels, temporal_shift

TEMPORAL_CONFIG_NAME = "latent_shift.json"
TemporalMixing = Literal["shift", "none"]


@dataclass
class TemporalConfig:
    """How frames talk to each other inside the U-Net.

    Args:
        temporal_mixing: ``"shift"`` (Latent-Shift) or ``"none"`` (frames independent, an image model).
        shift_fraction: share of channels shifted in each direction (1/8 forward + 1/8 backward).
    """

    temporal_mixing: TemporalMixing = "shift"
    shift_fraction: float = 0.125

    def __post_init__(self) -> None:
        if self.temporal_mixing not in ("shift", "none"):
            raise ValueError(f"temporal_mixing must be 'shift' or 'none', got {self.temporal_mixing!r}")
        shift_channels(1, self.shift_fraction)  # validates the range

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


class _FrameState:
    """Frame count of the batch currently inside the U-Net, shared by all its hooks."""

    def __init__(self) -> None:
        self.num_frames = 1


class _ShiftHook:
    """Forward pre-hook for ``ResnetBlock2D.conv1``: shift the residual branch over frames."""

    def __init__(self, state: _FrameState, fraction: float) -> None:
        self.state = state
        self.fraction = fraction

    def __call__(self, module: torch.nn.Module, args: tuple) -> tuple:
        return (temporal_shift(args[0], self.state.num_frames, self.fraction), *args[1:])


class _Temporal:
    """What :func:`apply_temporal_mixing` attaches to a U-Net (a plain attribute, not a module)."""

    def __init__(self, config: TemporalConfig, state: _FrameState, handles: list) -> None:
        self.config = config
        self.state = state
        self.handles = handles


def apply_temporal_mixing(
    unet: UNet2DConditionModel, config: TemporalConfig | None = None
) -> UNet2DConditionModel:
    """Install (or replace) temporal mixing on ``unet`` in place and return it."""
    config = config or TemporalConfig()
    old = getattr(unet, "_latent_shift", None)
    if old is not None:
        for handle in old.handles:
            handle.remove()
    state = _FrameState()
    handles = []
    if config.temporal_mixing == "shift":
        hook = _ShiftHook(state, config.shift_fraction)
        for module in unet.modules():
            if isinstance(module, ResnetBlock2D):
                handles.append(module.conv1.register_forward_pre_hook(hook))
    unet._latent_shift = _Temporal(config, state, handles)
    return unet


def get_temporal_config(unet: torch.nn.Module) -> TemporalConfig | None:
    """The temporal settings installed on ``unet``, or ``None`` for a plain image U-Net."""
    temporal = getattr(unet, "_latent_shift", None)
    return temporal.config if temporal is not None else None


def num_shift_hooks(unet: torch.nn.Module) -> int:
    """How many residual blocks carry the shift (for tests and logs)."""
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
    temporal = getattr(unet, "_latent_shift", None)
    if temporal is not None:
        temporal.state.num_frames = f
    out = unet(x, t, encoder_hidden_states=context, return_dict=False)[0]
    return rearrange(out, "(b f) c h w -> b f c h w", b=b)
