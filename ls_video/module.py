"""``LatentShiftModule``: the LightningModule that fine-tunes a shifted SD U-Net on video latents.

It composes a frozen VAE, a frozen text encoder + tokenizer, the shift-augmented U-Net and a
diffusers noise scheduler. ``training_step`` stays short: text embeddings, noise and one timestep
per clip, the U-Net on ``(B*F, C, h, w)``, an MSE against the scheduler's target, logging.
EMA, video logging and joint image batches live in ``callbacks/``.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ls_video.compile import compile_regions
from ls_video.loading import load_components
from ls_video.pipeline import LatentShiftPipeline, vae_to_latents
from ls_video.text import encode_prompts
from ls_video.unet import (
    ShiftPlacement,
    TemporalConfig,
    TemporalMixing,
    apply_temporal_mixing,
    load_added_weights,
    video_unet_forward,
)

FROZEN = ("vae.", "text_encoder.")


class LatentShiftModule(L.LightningModule):
    """Latent-Shift text-to-video fine-tuning of a Stable-Diffusion-layout model.

    Args:
        pretrained_model_name_or_path: diffusers folder or hub id of the base (``vae/``,
            ``text_encoder/``, ``tokenizer/``, ``unet/``, ``scheduler/``). Omit only when passing
            every component explicitly from Python.
        vae, text_encoder, tokenizer, unet, noise_scheduler: explicit components (override the base).
        revision: hub revision of the base.
        temporal_mixing: ``shift`` (Latent-Shift), ``none`` (frames independent), or the added-layer
            baselines ``temporal_conv`` / ``temporal_attention`` (zero-initialised; see ``ls_video.unet``).
        shift_fraction: share of channels shifted each way in every residual block.
        shift_placement: ``residual`` (shift before each block's ``conv1``) or ``input`` (the whole block
            input, skip path included).
        prediction_type: override the scheduler's target (``epsilon`` or ``v_prediction``).
        learning_rate: AdamW peak learning rate.
        betas: AdamW betas.
        weight_decay: AdamW weight decay.
        adam_epsilon: AdamW epsilon.
        warmup_steps: linear learning-rate warmup steps.
        lr_schedule: ``constant`` after warmup, or ``cosine`` decay to 0 over the run.
        trainable_patterns: regexes over U-Net parameter names that train; ``None`` trains all
            (as in the paper). Example: ``["conv1", "conv2"]`` trains only ResNet convolutions.
        caption_dropout: probability of replacing a caption by the empty prompt (enables CFG).
        snr_gamma: min-SNR-gamma loss weighting (e.g. 5.0); ``None`` gives plain MSE.
        x0_weight_cap: weight each clip's loss by ``min(1 / SNR, cap)`` (epsilon target), i.e. an
            x0-space loss capped at high noise. Plain epsilon MSE barely depends on the prediction of
            the clean clip at high noise, where layout and motion are decided; this puts weight there.
        gradient_checkpointing: trade compute for memory in the U-Net.
        channels_last: keep the U-Net in ``channels_last`` memory format (faster convolutions on GPUs).
        compile_unet: ``torch.compile`` each ResNet and transformer block of the U-Net in place (regional
            compilation, hooks guarded; state-dict keys unchanged). Whole-U-Net compilation is not
            offered for training: inductor computed wrong gradients for it (see ``ls_video.compile``).
            The first steps pay the compilation.
        fused_adamw: fused AdamW kernel; ``None`` uses it when every trainable parameter is on a GPU.
        val_timesteps: fixed timesteps for the validation loss (default: 5 evenly spaced).
        noise_seed: noise, timesteps and caption dropout of step ``s`` on rank ``r`` come from a generator
            seeded with ``(noise_seed, s, r)``, so a resumed run draws exactly what an uninterrupted
            one would have.
        max_nonfinite_steps: a non-finite loss on any rank skips the step on every rank (no optimizer,
            scheduler or EMA update; counted once in ``train/nonfinite_steps``; the step still counts
            towards ``max_steps``); this many in a row stop the run.
    """

    def __init__(
        self,
        pretrained_model_name_or_path: str | None = None,
        vae: AutoencoderKL | None = None,
        text_encoder: PreTrainedModel | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        unet: UNet2DConditionModel | None = None,
        noise_scheduler: DDPMScheduler | None = None,
        revision: str | None = None,
        temporal_mixing: TemporalMixing = "shift",
        shift_fraction: float = 0.125,
        shift_placement: ShiftPlacement = "residual",
        prediction_type: Literal["epsilon", "v_prediction"] | None = None,
        learning_rate: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 1e-2,
        adam_epsilon: float = 1e-8,
        warmup_steps: int = 500,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        trainable_patterns: list[str] | None = None,
        caption_dropout: float = 0.1,
        snr_gamma: float | None = None,
        x0_weight_cap: float | None = None,
        gradient_checkpointing: bool = False,
        channels_last: bool = False,
        compile_unet: bool = False,
        fused_adamw: bool | None = None,
        val_timesteps: list[int] | None = None,
        noise_seed: int = 0,
        max_nonfinite_steps: int = 5,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["vae", "text_encoder", "tokenizer", "unet", "noise_scheduler"])
        given = dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                     noise_scheduler=noise_scheduler)
        loaded: dict[str, Any] = {}
        if any(v is None for v in given.values()):
            if pretrained_model_name_or_path is None:
                missing = [k for k, v in given.items() if v is None]
                raise ValueError(f"pass pretrained_model_name_or_path or every component (missing {missing})")
            loaded = load_components(pretrained_model_name_or_path, revision)
            given = {k: v if v is not None else loaded[k] for k, v in given.items()}
        config = TemporalConfig(temporal_mixing, shift_fraction, shift_placement)
        self.vae, self.text_encoder, self.unet = given["vae"], given["text_encoder"], given["unet"]
        self.tokenizer = given["tokenizer"]
        scheduler = given["noise_scheduler"]
        if not isinstance(scheduler, DDPMScheduler):
            scheduler = DDPMScheduler.from_config(scheduler.config)
        if prediction_type is not None:
            scheduler.register_to_config(prediction_type=prediction_type)
        self.noise_scheduler = scheduler
        apply_temporal_mixing(self.unet, config)
        saved = loaded.get("temporal_config") if unet is None else None
        if saved is not None and saved.temporal_mixing == temporal_mixing:  # resume from an exported baseline
            load_added_weights(self.unet, os.path.join(pretrained_model_name_or_path, "unet"))

        self.unet.train()  # diffusers loads in eval mode; Lightning keeps the mode it finds
        for frozen in (self.vae, self.text_encoder):
            frozen.requires_grad_(False)
            frozen.eval()
        if trainable_patterns is not None:
            regexes = [re.compile(p) for p in trainable_patterns]
            for name, p in self.unet.named_parameters():
                p.requires_grad_(any(r.search(name) for r in regexes))
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
        if compile_unet:
            compile_regions(self.unet)
        self._empty_embedding: torch.Tensor | None = None
        self.nonfinite_steps = 0
        self._nonfinite_in_a_row = 0
        self.skipping_step = False  # set by training_step when any rank's loss is non-finite

    # ----------------------------------------------------------------------------- helpers
    def setup(self, stage: str) -> None:
        """Under mixed precision the frozen parts run in it (they never train): ``bf16-mixed`` casts the
        text encoder and the VAE to bf16, ``16-mixed`` the text encoder only (fp16 SD VAEs overflow)."""
        precision = str(self.trainer.precision)
        if precision.startswith("bf16"):
            frozen = {self.text_encoder: torch.bfloat16, self.vae: torch.bfloat16}
        elif precision.startswith("16"):
            frozen = {self.text_encoder: torch.float16}
        else:
            return
        for module, dtype in frozen.items():
            torch.nn.Module.to(module, dtype)  # (ModelMixin.to warns on dtype casts)
        self._empty_embedding = None

    def train(self, mode: bool = True) -> LatentShiftModule:
        """Frozen modules stay in eval mode whatever Lightning asks."""
        super().train(mode)
        self.vae.eval()
        self.text_encoder.eval()
        return self

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """``(B, L, D)`` text embeddings from the frozen encoder."""
        return encode_prompts(list(captions), self.tokenizer, self.text_encoder)

    def empty_embedding(self) -> torch.Tensor:
        """``(1, L, D)`` embedding of the empty prompt (caption dropout target), cached."""
        if self._empty_embedding is None or self._empty_embedding.device != self.device:
            self._empty_embedding = self.encode_text([""])
        return self._empty_embedding

    def step_generator(self) -> torch.Generator:
        """Generator for this optimizer step and rank: randomness that survives a resume."""
        key = f"{self.hparams.noise_seed}-{self.global_step}-{self.global_rank}".encode()
        seed = int.from_bytes(hashlib.sha256(key).digest()[:8], "little")  # distinct for every (seed, step, rank)
        return torch.Generator(self.device).manual_seed(seed)

    def text_embeddings(self, batch: dict, drop: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """Embeddings for the batch (precomputed ``text_embeds`` if present), with caption dropout."""
        if "text_embeds" in batch:
            embeds = batch["text_embeds"].to(self.device)
        else:
            embeds = self.encode_text(batch["captions"])
        if drop > 0:
            keep = torch.rand(embeds.shape[0], device=embeds.device, generator=generator) >= drop
            embeds = torch.where(keep[:, None, None], embeds, self.empty_embedding().to(embeds.dtype))
        return embeds

    def diffusion_loss(
        self, latents: torch.Tensor, embeds: torch.Tensor, timesteps: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Denoising loss for unscaled VAE latents ``(B, F, C, h, w)``; one timestep per clip."""
        x0 = vae_to_latents(latents.float(), self.vae)
        b = x0.shape[0]
        sched = self.noise_scheduler
        if timesteps is None:
            timesteps = torch.randint(0, sched.config.num_train_timesteps, (b,), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        noisy = sched.add_noise(x0, noise, timesteps)
        pred = video_unet_forward(self.unet, noisy, timesteps, embeds.to(noisy.dtype))
        if sched.config.prediction_type == "epsilon":
            target = noise
        elif sched.config.prediction_type == "v_prediction":
            target = sched.get_velocity(x0, noise, timesteps)
        else:
            raise ValueError(f"unsupported prediction_type {sched.config.prediction_type!r}")
        per_clip = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3, 4))
        if self.hparams.snr_gamma is not None:
            per_clip = per_clip * self.snr_weight(timesteps)
        if self.hparams.get("x0_weight_cap") is not None:
            per_clip = per_clip * self.x0_weight(timesteps)
        return per_clip.mean()

    def x0_weight(self, timesteps: torch.Tensor) -> torch.Tensor:
        """``min(1 / SNR, cap)``: epsilon error converted to clean-sample error, capped."""
        alphas = self.noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
        return torch.clamp((1 - alphas) / alphas, max=self.hparams.x0_weight_cap)

    def snr_weight(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Min-SNR-gamma weights (Hang et al. 2023) for the scheduler's target."""
        alphas = self.noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
        snr = alphas / (1 - alphas)
        weight = torch.clamp(snr, max=self.hparams.snr_gamma) / snr
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            weight = torch.clamp(snr, max=self.hparams.snr_gamma) / (snr + 1)
        return weight

    # ----------------------------------------------------------------------------- Lightning
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        latents = batch["latents"]  # (B, F, C, h, w), unscaled VAE latents
        generator = self.step_generator()
        embeds = self.text_embeddings(batch, self.hparams.caption_dropout, generator)
        loss = self.diffusion_loss(latents, embeds, generator=generator)
        self.skipping_step = self.any_rank_nonfinite(loss)
        if self.skipping_step:
            self.count_nonfinite(loss)
            return loss  # backward still runs on every rank (DDP stays in step); the update is dropped below
        self._nonfinite_in_a_row = 0
        name = "train/loss_image" if latents.shape[1] == 1 else "train/loss"
        self.log(name, loss, prog_bar=True, batch_size=latents.shape[0])
        return loss

    def any_rank_nonfinite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is non-finite on this or any other rank (one all-reduce under DDP)."""
        flag = (~torch.isfinite(loss.detach())).float()
        if self._trainer is not None and self.trainer.world_size > 1:
            flag = self.trainer.strategy.reduce(flag, reduce_op="sum")
        return bool(flag > 0)

    def count_nonfinite(self, loss: torch.Tensor) -> None:
        """Count a skipped step (the same count on every rank); stop after too many in a row."""
        self.nonfinite_steps += 1
        self._nonfinite_in_a_row += 1
        self.log("train/nonfinite_steps", float(self.nonfinite_steps), batch_size=1)
        if self._nonfinite_in_a_row >= self.hparams.max_nonfinite_steps:
            raise FloatingPointError(f"loss was {loss.item()} for {self._nonfinite_in_a_row} steps in a row at step "
                                     f"{self.global_step}; stopping (the last checkpoint is intact). Lower the "
                                     "learning rate, check the data, or use bf16/fp32 instead of fp16.")

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Drop the update of a skipped step on every rank: without gradients AdamW leaves every parameter
        and its state as they were. Under fp16 the gradient scaler needs gradients to inspect, so they are
        made non-finite instead and the scaler skips the step itself."""
        if not self.skipping_step:
            return
        scaler = getattr(self.trainer.precision_plugin, "scaler", None) if self._trainer else None
        for group in optimizer.param_groups:
            for p in group["params"]:
                if scaler is not None and p.grad is not None:
                    p.grad.fill_(float("nan"))
                else:
                    p.grad = None

    def lr_scheduler_step(self, scheduler: Any, metric: Any = None) -> None:
        """Skipped steps do not advance the learning-rate schedule."""
        if self.skipping_step:
            return
        scheduler.step() if metric is None else scheduler.step(metric)

    def validation_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        latents = batch["latents"]
        embeds = self.text_embeddings(batch, 0.0)
        total = self.noise_scheduler.config.num_train_timesteps
        steps = self.hparams.val_timesteps or [int(total * (i + 0.5) / 5) for i in range(5)]
        generator = torch.Generator(device=latents.device).manual_seed(batch_idx)
        losses = []
        for t in steps:
            ts = torch.full((latents.shape[0],), t, device=latents.device, dtype=torch.long)
            losses.append(self.diffusion_loss(latents, embeds, ts, generator))
        loss = torch.stack(losses).mean()
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=latents.shape[0])
        return loss

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.unet.parameters() if p.requires_grad]

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        params = self.trainable_parameters()
        fused = hp.get("fused_adamw")
        if fused is None:
            fused = bool(params) and all(p.is_cuda for p in params)
        optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, betas=tuple(hp.betas),
                                      weight_decay=hp.weight_decay, eps=hp.adam_epsilon, fused=fused or None)
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer else 1

        def factor(step: int) -> float:
            warm = min(1.0, (step + 1) / max(1, hp.warmup_steps))
            if hp.lr_schedule == "cosine":
                progress = min(1.0, max(0.0, (step - hp.warmup_steps) / max(1, total - hp.warmup_steps)))
                return warm * 0.5 * (1 + math.cos(math.pi * progress))
            return warm

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ----------------------------------------------------------------------------- checkpoints
    def _is_saved(self, key: str) -> bool:
        if key.startswith(FROZEN):
            return False
        if key.startswith("unet."):
            param = dict(self.unet.named_parameters()).get(key[len("unet."):])
            return param is None or param.requires_grad
        return True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only trainable state; frozen modules reload from the base."""
        state = checkpoint["state_dict"]
        for key in [k for k in state if not self._is_saved(k)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Fill the frozen entries back from the loaded base so strict loading succeeds."""
        state = checkpoint["state_dict"]
        for key, value in self.state_dict().items():
            state.setdefault(key, value)

    def pipeline(self) -> LatentShiftPipeline:
        """A sampling pipeline sharing this module's components (no copies)."""
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config(self.noise_scheduler.config)
        pipe = LatentShiftPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                   unet=self.unet, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        return pipe
