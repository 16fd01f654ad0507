"""Temporal mixing for a diffusers ``UNet2DConditionModel``.

``shift`` (Latent-Shift) is installed as a forward pre-hook on ``conv1`` of every ``ResnetBlock2D``
(down, mid and up blocks): it acts on the residual branch after ``norm1`` + activation, right before
the first convolution, as TSM's residual shift (``shift_placement="input"`` shifts the block input
instead, skip path included). Skip paths and attention are untouched. No module, parameter or buffer
is added, so ``state_dict`` keys and parameter counts stay those of the diffusers U-Net: Stable
Diffusion weights load unchanged and a trained U-Net saves with plain ``save_pretrained``. The
settings travel next to it in ``latent_shift.json``.

The baselines of the ablation add zero-initialised layers (identity at the start, so base weights
still load and behave unchanged): ``temporal_conv`` runs diffusers' ``TemporalConvLayer`` (1D
convolutions over frames, Make-A-Video / ModelScope style) after every ``ResnetBlock2D``;
``temporal_attention`` runs diffusers' ``TransformerTemporalModel`` (self-attention over frames with
sinusoidal frame positions, AnimateDiff style) after every spatial ``Transformer2DModel``. Their
weights are children of the blocks they follow, so they save and load with the U-Net's state dict.

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
from diffusers.models.resnet import ResnetBlock2D, TemporalConvLayer
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from einops import rearrange

from ls_video.shift import shift_channels, shift_frames

TEMPORAL_CONFIG_NAME = "latent_shift.json"
TemporalMixing = Literal["shift", "none", "temporal_conv", "temporal_attention"]
ShiftPlacement = Literal["residual", "input"]
MIXINGS = ("shift", "none", "temporal_conv", "temporal_attention")
ADDED_NAMES = ("temporal_conv", "temporal_attention")  # attribute names of added layers


@dataclass
class TemporalConfig:
    """How frames talk to each other inside the U-Net.

    Args:
        temporal_mixing: ``"shift"`` (Latent-Shift), ``"none"`` (frames independent, an image model),
            or the added-layer baselines ``"temporal_conv"`` / ``"temporal_attention"``.
        shift_fraction: share of channels shifted in each direction (1/8 forward + 1/8 backward).
        shift_placement: ``"residual"`` (before ``conv1``, the default) or ``"input"`` (the whole block
            input, skip path included; TSM's in-place shift).
    """

    temporal_mixing: TemporalMixing = "shift"
    shift_fraction: float = 0.125
    shift_placement: ShiftPlacement = "residual"

    def __post_init__(self) -> None:
        if self.temporal_mixing not in MIXINGS:
            raise ValueError(f"temporal_mixing must be one of {', '.join(MIXINGS)}; got {self.temporal_mixing!r}")
        if self.shift_placement not in ("residual", "input"):
            raise ValueError(f"shift_placement must be 'residual' or 'input', got {self.shift_placement!r}")
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
    """Frame count of the batch currently inside the U-Net, shared by all its hooks.

    :func:`video_unet_forward` sets it for its call; a plain ``unet(images)`` call resets it to 1 (the
    U-Net's own pre-hook, :class:`_FrameReset`), so images never exchange channels. It is *not* reset
    when the video call returns: gradient checkpointing re-runs the blocks during backward and needs it.
    """

    def __init__(self) -> None:
        self.num_frames = 1
        self.video_call = False


class _FrameReset:
    """Pre-hook on the U-Net itself: a call not made by :func:`video_unet_forward` is a batch of images."""

    def __init__(self, state: _FrameState) -> None:
        self.state = state

    def __call__(self, module: torch.nn.Module, args: tuple) -> None:
        if not self.state.video_call:
            self.state.num_frames = 1
        self.state.video_call = False


class _ShiftHook:
    """Forward pre-hook: shift the hooked module's first input over frames.

    ``n`` (channels moved each way) is fixed when the hook is installed, so a call is one operator:
    nothing is validated here (:func:`video_unet_forward` folds frames, so ``F`` divides the batch).
    ``in_place`` (the ``conv1`` hook): without autograd the input is the fresh activation that only
    ``conv1`` reads, so it is shifted in place (no full-size copy while sampling).
    """

    def __init__(self, state: _FrameState, n: int, in_place: bool = False) -> None:
        self.state = state
        self.n = n
        self.in_place = in_place

    def __call__(self, module: torch.nn.Module, args: tuple) -> tuple | None:
        num_frames = self.state.num_frames
        if num_frames == 1 or self.n == 0:
            return None  # the identity: leave the input as it is
        x = args[0]
        in_place = self.in_place and not torch.is_grad_enabled()
        return (shift_frames(x, num_frames, self.n, in_place), *args[1:])


class _AddedLayerHook:
    """Forward hook: pass a block's output through the temporal layer stored on that block."""

    def __init__(self, state: _FrameState, name: str) -> None:
        self.state = state
        self.name = name

    def __call__(self, module: torch.nn.Module, args: tuple, output):
        layer = getattr(module, self.name)
        if isinstance(output, tuple):  # Transformer2DModel(return_dict=False)
            return (layer(output[0], num_frames=self.state.num_frames, return_dict=False)[0], *output[1:])
        if self.name == "temporal_attention":
            return type(output)(sample=layer(output.sample, num_frames=self.state.num_frames, return_dict=False)[0])
        return layer(output, num_frames=self.state.num_frames)


def _temporal_attention(block: Transformer2DModel, max_frames: int = 64) -> TransformerTemporalModel:
    """A zero-initialised temporal transformer shaped like ``block`` (same heads and width)."""
    channels = block.config.in_channels
    heads = block.config.num_attention_heads
    layer = TransformerTemporalModel(
        num_attention_heads=heads, attention_head_dim=channels // heads, in_channels=channels,
        norm_num_groups=block.config.norm_num_groups, positional_embeddings="sinusoidal",
        num_positional_embeddings=max_frames,
    )
    torch.nn.init.zeros_(layer.proj_out.weight)
    torch.nn.init.zeros_(layer.proj_out.bias)
    return layer


def _remove_added_layers(unet: torch.nn.Module) -> None:
    for module in unet.modules():
        for name in ADDED_NAMES:
            if name in module._modules:
                del module._modules[name]


def added_parameters(unet: torch.nn.Module) -> int:
    """Parameters the temporal layers added to the image U-Net (0 for ``shift`` and ``none``)."""
    return sum(p.numel() for n, p in unet.named_parameters() if any(f".{a}." in f".{n}" for a in ADDED_NAMES))


class _Temporal:
    """What :func:`apply_temporal_mixing` attaches to a U-Net (a plain attribute, not a module)."""

    def __init__(self, config: TemporalConfig, state: _FrameState, handles: list, reset_handle) -> None:
        self.config = config
        self.state = state
        self.handles = handles  # one per hooked block
        self.reset_handle = reset_handle


def apply_temporal_mixing(
    unet: UNet2DConditionModel, config: TemporalConfig | None = None
) -> UNet2DConditionModel:
    """Install (or replace) temporal mixing on ``unet`` in place and return it.

    Added layers (``temporal_conv`` / ``temporal_attention``) are created zero-initialised on the
    U-Net's device and dtype; an earlier mixing's hooks and added layers are removed first.
    """
    config = config or TemporalConfig()
    old = getattr(unet, "_latent_shift", None)
    if old is not None:
        for handle in [*old.handles, old.reset_handle]:
            handle.remove()
    _remove_added_layers(unet)
    state = _FrameState()
    handles = []
    ref = next(unet.parameters())
    for module in list(unet.modules()):
        if config.temporal_mixing == "shift" and isinstance(module, ResnetBlock2D):
            residual = config.shift_placement == "residual"
            target = module.conv1 if residual else module
            n = shift_channels(module.conv1.in_channels, config.shift_fraction)
            hook = _ShiftHook(state, n, in_place=residual)
            handles.append(target.register_forward_pre_hook(hook))
        elif config.temporal_mixing == "temporal_conv" and isinstance(module, ResnetBlock2D):
            with torch.device(ref.device):
                module.temporal_conv = TemporalConvLayer(module.conv2.out_channels,
                                                         norm_num_groups=module.norm2.num_groups)
            module.temporal_conv.to(ref.dtype)
            handles.append(module.register_forward_hook(_AddedLayerHook(state, "temporal_conv")))
        elif config.temporal_mixing == "temporal_attention" and isinstance(module, Transformer2DModel):
            with torch.device(ref.device):
                module.temporal_attention = _temporal_attention(module)
            torch.nn.Module.to(module.temporal_attention, ref.dtype)  # (ModelMixin.to warns on dtype casts)
            handles.append(module.register_forward_hook(_AddedLayerHook(state, "temporal_attention")))
    reset_handle = unet.register_forward_pre_hook(_FrameReset(state))
    unet._latent_shift = _Temporal(config, state, handles, reset_handle)
    return unet


def get_temporal_config(unet: torch.nn.Module) -> TemporalConfig | None:
    """The temporal settings installed on ``unet``, or ``None`` for a plain image U-Net."""
    temporal = getattr(unet, "_latent_shift", None)
    return temporal.config if temporal is not None else None


def load_added_weights(unet: torch.nn.Module, unet_dir: str | os.PathLike) -> None:
    """Load the added temporal layers' weights from a saved U-Net folder (diffusers drops them)."""
    names = [k for k in unet.state_dict() if any(f".{a}." in f".{k}" for a in ADDED_NAMES)]
    if not names:
        return
    from safetensors.torch import load_file

    files = sorted(f for f in os.listdir(unet_dir) if f.endswith(".safetensors"))
    state = {}
    for name in files:
        state.update({k: v for k, v in load_file(os.path.join(unet_dir, name)).items() if k in names})
    missing = sorted(set(names) - set(state))
    if missing:
        raise ValueError(f"{unet_dir} lacks {len(missing)} temporal-layer weights, e.g. {missing[0]}")
    unet.load_state_dict(state, strict=False)


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
    temporal = getattr(unet, "_latent_shift", None)
    if temporal is not None:
        temporal.state.num_frames, temporal.state.video_call = f, True
    out = unet(x, t, encoder_hidden_states=context, return_dict=False)[0]
    return rearrange(out, "(b f) c h w -> b f c h w", b=b)
