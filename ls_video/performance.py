"""Speed and memory switches of the trained U-Net; none changes what is computed."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ls_video.compile import compile_regions


@dataclass
class PerformanceConfig:
    """Args:
        gradient_checkpointing: trade compute for memory in the U-Net (frame-aware: the recomputed
            blocks see the clip's frame count).
        channels_last: keep the U-Net in ``channels_last`` memory format (faster convolutions on GPUs).
        compile_unet: ``torch.compile`` each ResNet and transformer block of the U-Net in place (regional
            compilation, hooks guarded; state-dict keys unchanged). Whole-U-Net compilation is not
            offered for training: inductor computed wrong gradients for it (see ``ls_video.compile``).
            The first steps pay the compilation.
    """

    gradient_checkpointing: bool = False
    channels_last: bool = False
    compile_unet: bool = False


def apply_performance(unet: torch.nn.Module, cfg: PerformanceConfig) -> None:
    """Apply ``cfg`` to ``unet`` in place (before or after its temporal mixing is installed)."""
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()  # frame-aware once the temporal mixing is installed
    if cfg.channels_last:
        unet.to(memory_format=torch.channels_last)
    if cfg.compile_unet:
        compile_regions(unet)
