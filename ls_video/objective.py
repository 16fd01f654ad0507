"""The diffusion objective: how clean latents become a training example and a loss.

One object, used by training (:class:`ls_video.module.LatentShiftModule`), validation and the toy
base recipe (:mod:`ls_video.toy.make_base`), in the spirit of k-diffusion's denoiser wrapper:

    objective = DiffusionObjective(noise_scheduler, ObjectiveConfig(x0_weight_cap=100), vae.config)
    loss = objective.loss(lambda noisy, t: video_unet_forward(unet, noisy, t, embeds), raw_latents, generator)

It applies the latent scaling (:class:`ls_video.vae_space.LatentScale` of the VAE's config), owns timestep and noise
sampling, the target (``epsilon`` or ``v_prediction``), caption dropout and the per-sample loss
weights (min-SNR-gamma via diffusers' ``compute_snr``, or a capped x0-space weight). Shapes are
``(B, ...)``: image batches ``(B, C, h, w)`` and video batches ``(B, F, C, h, w)`` alike, one
timestep per sample (a clip's frames share it); whether a batch is one of images the caller says (``images``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

from ls_video.errors import UsageError
from ls_video.vae_space import LatentScale


@dataclass
class ObjectiveConfig:
    """What the U-Net is trained to predict and how samples are weighted.

    Args:
        prediction_type: override the scheduler's target (``epsilon`` or ``v_prediction``).
        caption_dropout: probability of replacing a caption by the empty prompt (enables CFG).
        snr_gamma: min-SNR-gamma loss weighting (e.g. 5.0); ``None`` gives plain MSE.
        x0_weight_cap: weight each sample's loss by ``min(1 / SNR, cap)`` (epsilon target), i.e. an
            x0-space loss capped at high noise. Plain epsilon MSE barely depends on the prediction of
            the clean clip at high noise, where layout and motion are decided; this puts weight there.
        image_weight: ``None``: one-frame batches (images, ``F = 1``) are weighted as videos. A number:
            they get this constant weight at every timestep instead (the plain text-to-image loss the
            base was trained with, scaled), so image batches also train low noise, where a capped x0
            weight puts almost none (joint image-video training, docs/TOY.md). For scale: the mean of
            :meth:`DiffusionObjective.weights` over the timesteps.
    """

    prediction_type: Literal["epsilon", "v_prediction"] | None = None
    caption_dropout: float = 0.1
    snr_gamma: float | None = None
    x0_weight_cap: float | None = None
    image_weight: float | None = None

    def __post_init__(self) -> None:
        if self.image_weight is not None and not self.image_weight > 0:
            raise UsageError(f"image_weight must be > 0 (or null), got {self.image_weight}")
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise UsageError(f"caption_dropout must be in [0, 1], got {self.caption_dropout}")
        if self.prediction_type not in (None, "epsilon", "v_prediction"):
            raise UsageError(f"prediction_type must be 'epsilon' or 'v_prediction', got {self.prediction_type!r}")

    def scheduler_overrides(self) -> dict[str, Any]:
        """The entries this objective sets in the base's noise-scheduler config (the training scheduler); an
        export writes the same into its ``scheduler/`` (:func:`ls_video.checkpoint.pipeline_from_checkpoint`)."""
        return {} if self.prediction_type is None else {"prediction_type": self.prediction_type}


Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class DiffusionObjective:
    """Scaling, noising, target and weighting of latent diffusion training (see the module docstring).

    Args:
        scheduler: the base's noise scheduler (any diffusers scheduler; its config builds a DDPM one).
        config: :class:`ObjectiveConfig`.
        vae_config: the VAE's config (``scaling_factor``, optional ``shift_factor``); ``None`` for latents
            that are already scaled.
    """

    def __init__(self, scheduler: Any, config: ObjectiveConfig | None = None, vae_config: Any = None) -> None:
        self.config = config or ObjectiveConfig()
        if not isinstance(scheduler, DDPMScheduler):
            scheduler = DDPMScheduler.from_config(scheduler.config)
        overrides = self.config.scheduler_overrides()
        if overrides:
            scheduler.register_to_config(**overrides)
        if scheduler.config.prediction_type not in ("epsilon", "v_prediction"):
            raise UsageError(f"unsupported prediction_type {scheduler.config.prediction_type!r}")
        self.scheduler = scheduler
        self.latent_scale = LatentScale.of(vae_config)

    @property
    def num_timesteps(self) -> int:
        return self.scheduler.config.num_train_timesteps

    def scale(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw VAE latents -> the diffusion model's space."""
        return self.latent_scale.to_model(raw)

    def drop_captions(self, embeds: torch.Tensor, empty: torch.Tensor | Callable[[], torch.Tensor],
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Replace each sample's text embedding by ``empty`` (or what ``empty()`` gives, asked for only when the
        probability is above 0) with the probability ``config.caption_dropout``: the one owner of caption dropout
        (the module only says which embeddings are training ones)."""
        p = self.config.caption_dropout
        if p <= 0:
            return embeds
        empty = empty() if callable(empty) else empty
        keep = torch.rand(embeds.shape[0], device=embeds.device, generator=generator) >= p
        return torch.where(keep[:, None, None], embeds, empty.to(embeds.dtype))

    def target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.scheduler.config.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(x0, noise, timesteps)
        return noise

    def weights(self, timesteps: torch.Tensor) -> torch.Tensor | None:
        """Per-sample loss weights: min-SNR-gamma (Hang et al. 2023) and/or the capped x0 weight."""
        cfg = self.config
        if cfg.snr_gamma is None and cfg.x0_weight_cap is None:
            return None
        snr = compute_snr(self.scheduler, timesteps).float()
        weight = torch.ones_like(snr)
        if cfg.snr_gamma is not None:
            clipped = torch.clamp(snr, max=cfg.snr_gamma)
            v = self.scheduler.config.prediction_type == "v_prediction"
            weight = weight * clipped / (snr + 1 if v else snr)
        if cfg.x0_weight_cap is not None:
            weight = weight * torch.clamp(1 / snr, max=cfg.x0_weight_cap)
        return weight

    def loss(self, denoiser: Denoiser, raw: torch.Tensor, generator: torch.Generator | None = None,
             timesteps: torch.Tensor | None = None, images: bool = False) -> torch.Tensor:
        """Weighted MSE of ``denoiser(noisy, timesteps)`` against the target, for raw VAE latents ``raw``.

        Timesteps (one per sample, unless given) and noise come from ``generator``. ``images``: the caller's
        word that ``raw`` is an image batch (:func:`ls_video.batch.is_image_batch`), weighted by
        ``image_weight`` when that is set.
        """
        x0 = self.scale(raw)
        b = x0.shape[0]
        if timesteps is None:
            timesteps = torch.randint(0, self.num_timesteps, (b,), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        pred = denoiser(self.scheduler.add_noise(x0, noise, timesteps), timesteps)
        target = self.target(x0, noise, timesteps)
        per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
        if images and self.config.image_weight is not None:
            weight = torch.full((b,), self.config.image_weight, device=x0.device)
        else:
            weight = self.weights(timesteps)
        if weight is not None:
            per_sample = per_sample * weight
        return per_sample.mean()

    def validation_timesteps(self) -> list[int]:
        """5 evenly spaced timesteps: the validation loss's."""
        return [int(self.num_timesteps * (i + 0.5) / 5) for i in range(5)]
