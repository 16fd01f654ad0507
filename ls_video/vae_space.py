"""Between pixels, the VAE and the diffusion model: each conversion written once.

* :func:`pixels_to_vae`: uint8 frames ``(..., H, W, 3)`` -> the VAE's input ``(..., 3, H, W)`` in [-1, 1]
  (preprocessing, the toy base and the personalisation recipes).
* :class:`LatentScale`: raw VAE latents <-> the diffusion model's space, by the VAE's ``scaling_factor`` and
  optional ``shift_factor`` (training scales, :class:`~ls_video.objective.DiffusionObjective`; sampling
  unscales before decoding, :class:`~ls_video.pipeline.LatentShiftPipeline`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


def pixels_to_vae(frames: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(..., H, W, 3)`` uint8 frames -> ``(..., 3, H, W)`` in [-1, 1] as ``dtype``."""
    return frames.movedim(-1, -3).to(dtype) / 127.5 - 1


@dataclass(frozen=True)
class LatentScale:
    """``scaled = (raw - shift_factor) * scaling_factor``; the identity for latents that are already scaled."""

    scaling_factor: float = 1.0
    shift_factor: float = 0.0

    @classmethod
    def of(cls, vae_config: Any) -> LatentScale:
        """From a VAE's config (``None``: the identity; a missing or ``None`` factor: its neutral value)."""
        return cls(float(getattr(vae_config, "scaling_factor", None) or 1.0),
                   float(getattr(vae_config, "shift_factor", None) or 0.0))

    def to_model(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw VAE latents -> the diffusion model's space (float32)."""
        return (raw.float() - self.shift_factor) * self.scaling_factor

    def to_vae(self, latents: torch.Tensor) -> torch.Tensor:
        """The diffusion model's latents -> what the VAE decodes."""
        return latents / self.scaling_factor + self.shift_factor
