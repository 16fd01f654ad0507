"""The added-layer baselines of the ablation (not Latent-Shift): zero-initialised temporal layers.

``temporal_conv`` runs diffusers' ``TemporalConvLayer`` (1D convolutions over frames, Make-A-Video /
ModelScope style) after every ``ResnetBlock2D``; ``temporal_attention`` runs diffusers'
``TransformerTemporalModel`` (self-attention over frames with sinusoidal frame positions, AnimateDiff
style) after every spatial ``Transformer2DModel``. Identity at the start, so base weights load and
behave unchanged. Their weights are children of the blocks they follow, so they save and load with
the U-Net's state dict; :func:`ls_video.unet.apply_temporal_mixing` installs them.
"""

from __future__ import annotations

import os

import torch
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

from ls_video.errors import UsageError
from ls_video.frame_state import FrameState

ADDED_NAMES = ("temporal_conv", "temporal_attention")  # attribute names of added layers


class AddedLayerHook:
    """Forward hook: pass a block's output through the temporal layer stored on that block."""

    def __init__(self, state: FrameState, name: str) -> None:
        self.state = state
        self.name = name

    def __call__(self, module: torch.nn.Module, args: tuple, output):
        layer = getattr(module, self.name)
        if isinstance(output, tuple):  # Transformer2DModel(return_dict=False)
            return (layer(output[0], num_frames=self.state.num_frames, return_dict=False)[0], *output[1:])
        if self.name == "temporal_attention":
            return type(output)(sample=layer(output.sample, num_frames=self.state.num_frames, return_dict=False)[0])
        return layer(output, num_frames=self.state.num_frames)


def temporal_attention_like(block: Transformer2DModel, max_frames: int = 64) -> TransformerTemporalModel:
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


def remove_added_layers(unet: torch.nn.Module) -> None:
    for module in unet.modules():
        for name in ADDED_NAMES:
            if name in module._modules:
                del module._modules[name]


def added_parameters(unet: torch.nn.Module) -> int:
    """Parameters the temporal layers added to the image U-Net (0 for ``shift`` and ``none``)."""
    return sum(p.numel() for n, p in unet.named_parameters() if any(f".{a}." in f".{n}" for a in ADDED_NAMES))


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
        raise UsageError(f"{unet_dir} lacks {len(missing)} temporal-layer weights, e.g. {missing[0]}")
    unet.load_state_dict(state, strict=False)
