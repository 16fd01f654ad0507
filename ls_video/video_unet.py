"""A diffusers U-Net made a video U-Net: :func:`load_video_unet` installs the temporal mixing, then loads the
weights diffusers' loader does not (added temporal layers, a checkpoint's trained tensors). The only place that
does; the pipeline, the LightningModule and the checkpoint loader all call it."""

from __future__ import annotations

import os

import torch
from diffusers import UNet2DConditionModel

from ls_video.errors import UsageError
from ls_video.lora import LoraSettings, add_lora
from ls_video.temporal_layers import load_added_weights
from ls_video.unet import TemporalConfig, apply_temporal_mixing


def load_video_unet(unet: UNet2DConditionModel, config: TemporalConfig | None = None,
                    folder: str | os.PathLike | None = None, state: dict[str, torch.Tensor] | None = None,
                    lora: LoraSettings | None = None) -> UNet2DConditionModel:
    """Make ``unet`` (as diffusers loaded it) a video U-Net, in place: install the temporal mixing first, then
    load the weights that need it.

    Args:
        config: the mixing to install; default: the one saved in ``folder``, else the shift.
        folder: the U-Net folder ``unet`` came from; when it saved the same mixing, its added temporal layers'
            weights (which diffusers' loader drops) are loaded.
        state: a checkpoint's trained U-Net tensors (U-Net parameter names), loaded last.
        lora: add this trainable adapter (:mod:`ls_video.lora`) before ``state`` loads (a LoRA run's checkpoint
            holds only the adapter's tensors); the rest of the U-Net is then frozen.
    """
    saved = TemporalConfig.load(folder) if folder is not None and os.path.isdir(folder) else None
    config = config or saved or TemporalConfig()
    apply_temporal_mixing(unet, config)
    if saved is not None and saved.temporal_mixing == config.temporal_mixing:
        load_added_weights(unet, folder)
    if lora is not None:
        add_lora(unet, lora)
    if state is not None:
        _, unexpected = unet.load_state_dict(state, strict=False)
        if unexpected:
            raise UsageError(f"checkpoint U-Net keys do not match the base: {unexpected[:3]} ...")
    return unet
