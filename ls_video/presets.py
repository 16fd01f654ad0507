"""Real-size U-Net configurations (random init) for benchmarks and parameter counts."""

from __future__ import annotations

from diffusers import UNet2DConditionModel

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)


def sd15_unet(**overrides) -> UNet2DConditionModel:
    """The Stable Diffusion 1.5 U-Net architecture with random weights (860M parameters)."""
    return UNet2DConditionModel(**{**SD15_UNET, **overrides})
