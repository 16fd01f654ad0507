"""Data for Latent-Shift: latent shards in, ``{"latents": (B, F, C, h, w), "captions"}`` batches out."""

from datamodules.latent_video import ImageLatentDataModule, LatentVideoDataModule
from datamodules.toy import ToyDataModule

__all__ = ["ImageLatentDataModule", "LatentVideoDataModule", "ToyDataModule"]
