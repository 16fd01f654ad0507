"""Latent-Shift: text-to-video from a text-to-image latent diffusion model with a temporal shift."""

from ls_video.shift import temporal_shift
from ls_video.unet import TemporalConfig, apply_temporal_mixing, get_temporal_config, video_unet_forward

__all__ = [
    "TemporalConfig",
    "apply_temporal_mixing",
    "get_temporal_config",
    "temporal_shift",
    "video_unet_forward",
]
__version__ = "0.1.0"
