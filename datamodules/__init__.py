"""Data for Latent-Shift: latent shards in, ``{"latents": (B, F, C, h, w), "captions"}`` batches out."""

from ls_video.datamodules.latent_video import ImageLatentDataModule, LatentVideoDataModule
from ls_video.datamodules.toy import ToyDataModule

__all__ = ["ImageLatentDataModule", "LatentVideoDataModule", "ToyDataModule"]
