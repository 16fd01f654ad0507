"""``LatentShiftModule``: the LightningModule that fine-tunes a shifted SD U-Net on video latents.

Composition and Lightning hooks only. The parts come from :mod:`ls_video.components`, the temporal
mixing from :mod:`ls_video.unet`, the loss from :class:`ls_video.objective.DiffusionObjective`, the
optimiser from :mod:`ls_video.optim`, speed switches from :mod:`ls_video.performance`, and the
non-finite-step guard from :mod:`ls_video.nonfinite`. EMA, video logging and joint image batches live
in ``callbacks/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, TypeVar

import lightning as L
import torch

from ls_video.batch import IMAGE_BATCH, is_image_batch
from ls_video.components import (
    PART_NAMES,
    Parts,
    build_pipeline,
    freeze,
    load_components,
    load_text_encoder,
)
from ls_video.errors import UsageError
from ls_video.hub import resolve
from ls_video.lora import LoraSettings
from ls_video.nonfinite import NonFiniteGuard
from ls_video.objective import DiffusionObjective, ObjectiveConfig
from ls_video.optim import OptimConfig, build_optimizer, select_trainable
from ls_video.performance import PerformanceConfig, apply_performance
from ls_video.pipeline import LatentShiftPipeline
from ls_video.preemption import is_data_stop
from ls_video.sharding import is_sharded, shard_unet
from ls_video.text import encode_prompts
from ls_video.trainer_options import check_trainer
from ls_video.unet import TemporalConfig, video_unet_forward
from ls_video.video_unet import load_video_unet

FROZEN = ("vae.", "text_encoder.")
T = TypeVar("T")


def _as(cls: type[T], value: T | dict | None) -> T:
    """A config dataclass from itself, a dict (checkpoint hyper-parameters) or ``None`` (defaults)."""
    if value is None:
        return cls()
    return cls(**value) if isinstance(value, dict) else dataclasses.replace(value)


class Unregistered:
    """Holds a module *beside* a LightningModule rather than in it: assigned to the holder's ``module``, it is
    no child (torch's ``__setattr__`` registers every ``nn.Module`` attribute), so it is not in ``state_dict``
    or checkpoints, not moved by ``.to()`` / the strategy, not counted in the model summary."""

    def __init__(self, module: torch.nn.Module | None = None) -> None:
        self.module = module


class LatentShiftModule(NonFiniteGuard):
    """Latent-Shift text-to-video fine-tuning of a Stable-Diffusion-layout model.

    Args:
        pretrained_model_name_or_path: diffusers folder or hub id of the base (``vae/``,
            ``text_encoder/``, ``tokenizer/``, ``unet/``, ``scheduler/``). Omit only when passing
            every part in ``components``.
        temporal: how frames mix in the U-Net (:class:`~ls_video.unet.TemporalConfig`: ``shift``, ``none`` or
            an added-layer baseline; share of channels shifted each way; placement).
        objective: target, caption dropout and loss weighting (:class:`~ls_video.objective.ObjectiveConfig`).
        optim: AdamW, warmup/schedule and which U-Net parameters train (:class:`~ls_video.optim.OptimConfig`).
        performance: gradient checkpointing, channels-last, regional compilation
            (:class:`~ls_video.performance.PerformanceConfig`).
        lora: train a low-rank adapter instead of the U-Net's weights (:class:`~ls_video.lora.LoraSettings`;
            ``rank: 0``, the default, trains the weights; ``configs/lora.yaml``).
        cached_text_embeddings: train from shards that carry the text encoder's output (``ls-video preprocess
            --text-encoder``): the text encoder is not loaded for training (only, on the CPU, when videos are
            sampled, e.g. by ``VideoLogger``); caption dropout uses the shards' cached empty-prompt embedding.
        noise_seed: noise, timesteps and caption dropout of micro-batch ``m`` of step ``s`` on rank ``r`` come
            from a generator seeded with ``(noise_seed, s, r, m)`` (``m`` left out for the first micro-batch), so
            a resumed run draws exactly what an uninterrupted one would.
        max_nonfinite_steps: a non-finite loss (of any micro-batch) on any rank skips the step on every rank (see
            :class:`~ls_video.nonfinite.NonFiniteGuard`); this many in a row stop the run.
        revision: Hub revision of the base (a Hub id ``ORG/NAME``; a path that exists or starts with ``/``,
            ``./``, ``../``, ``~`` is a local folder: :func:`ls_video.hub.is_local`).
        variant: weights variant of the base's files (e.g. ``fp16``), as diffusers' ``variant``.
        components: explicit parts from Python (``vae``, ``text_encoder``, ``tokenizer``, ``unet``,
            ``noise_scheduler``); they override the base's.
    """

    def __init__(
        self,
        pretrained_model_name_or_path: str | None = None,
        temporal: TemporalConfig = TemporalConfig(),
        objective: ObjectiveConfig = ObjectiveConfig(),
        optim: OptimConfig = OptimConfig(),
        performance: PerformanceConfig = PerformanceConfig(),
        lora: LoraSettings = LoraSettings(),
        cached_text_embeddings: bool = False,
        noise_seed: int = 0,
        max_nonfinite_steps: int = 5,
        revision: str | None = None,
        components: dict[str, Any] | None = None,
        variant: str | None = None,
    ) -> None:
        super().__init__()
        temporal, objective = _as(TemporalConfig, temporal), _as(ObjectiveConfig, objective)
        optim, performance = _as(OptimConfig, optim), _as(PerformanceConfig, performance)
        lora = _as(LoraSettings, lora)
        if lora.enabled and optim.trainable_patterns is not None:
            raise UsageError("optim.trainable_patterns and lora.rank > 0 both choose what trains; set one of them")
        self.save_hyperparameters(dict(
            pretrained_model_name_or_path=pretrained_model_name_or_path, revision=revision, variant=variant,
            noise_seed=noise_seed,
            max_nonfinite_steps=max_nonfinite_steps, cached_text_embeddings=cached_text_embeddings,
            **{name: dataclasses.asdict(group) for name, group in (
                ("temporal", temporal), ("objective", objective), ("optim", optim), ("performance", performance),
                ("lora", lora))}))
        self.optim_config, self.max_nonfinite_steps = optim, max_nonfinite_steps
        given = {"text_encoder": None, **(components or {})} if cached_text_embeddings else components or {}
        parts = self._load_parts(pretrained_model_name_or_path, revision, given, temporal, lora, variant)
        self.vae, self.text_encoder, self.tokenizer, self.unet = (parts[k] for k in PART_NAMES[:4])
        self.objective = DiffusionObjective(parts["noise_scheduler"], objective, self.vae.config)
        self.noise_scheduler = self.objective.scheduler
        self.unet.train()  # diffusers loads in eval mode; Lightning keeps the mode it finds
        freeze(self.vae, self.text_encoder)
        if not lora.enabled:  # (an adapter trains alone: load_video_unet froze the rest)
            select_trainable(self.unet, optim.trainable_patterns)
        apply_performance(self.unet, performance)
        self._empty_embedding: torch.Tensor | None = None
        self._sampling_text_encoder = Unregistered()  # loaded only to sample: no submodule, never saved

    @staticmethod
    def _load_parts(path: str | None, revision: str | None, given: dict[str, Any], temporal: TemporalConfig,
                    lora: LoraSettings, variant: str | None = None) -> Parts:
        """The given parts, the missing ones from the base (a folder or a Hub id, resolved once); the U-Net with its
        temporal mixing (and an exported baseline's added-layer weights when resuming from one) and the LoRA
        adapter, if any."""
        local = resolve(path, revision, variant, what="base model") if path is not None and (
            set(PART_NAMES) - set(given)) else path
        parts = load_components(local, given=given, variant=variant)
        load_video_unet(parts["unet"], temporal, folder=None if "unet" in given else os.path.join(local, "unet"),
                        lora=lora)
        return parts

    # ----------------------------------------------------------------------------- helpers
    def setup(self, stage: str) -> None:
        """Under mixed precision the frozen parts run in it (they never train): ``bf16-mixed`` casts the
        text encoder and the VAE to bf16, ``16-mixed`` the text encoder only (fp16 SD VAEs overflow). Trainer
        options that cannot work are refused first (:mod:`ls_video.trainer_options`)."""
        if isinstance(self.trainer, L.Trainer):  # (benchmarks/frozen_memory.py runs this with a stand-in)
            check_trainer(self.trainer)
        precision = str(self.trainer.precision)
        if precision.startswith("bf16"):
            frozen = {self.text_encoder: torch.bfloat16, self.vae: torch.bfloat16}
        elif precision.startswith("16"):
            frozen = {self.text_encoder: torch.float16}
        else:
            return
        for module, dtype in frozen.items():
            if module is None:  # (cached text embeddings: no text encoder)
                continue
            torch.nn.Module.to(module, dtype)  # (ModelMixin.to warns on dtype casts)
        self._empty_embedding = None

    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy`` (``configs/strategy/fsdp.yaml``) shard the U-Net block by block;
        the frozen parts stay whole (:mod:`ls_video.sharding`). Nothing to do under other strategies.

        The strategy loads a checkpoint into the shards itself, before :meth:`on_load_checkpoint` can add the
        frozen parts (which checkpoints leave out) back, so it loads without requiring them."""
        if self.device_mesh is not None and not is_sharded(next(self.unet.parameters())):
            shard_unet(self.unet, self.device_mesh)
            self.strict_loading = False

    def train(self, mode: bool = True) -> LatentShiftModule:
        """Frozen modules stay in eval mode whatever Lightning asks."""
        super().train(mode)
        freeze(self.vae, self.text_encoder)
        return self

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """``(B, L, D)`` text embeddings from the frozen encoder (on this module's device)."""
        return encode_prompts(list(captions), self.tokenizer, self.sampling_text_encoder()).to(self.device)

    def sampling_text_encoder(self) -> torch.nn.Module:
        """The text encoder; with cached text embeddings, loaded on first use on the CPU (to sample videos)."""
        if self.text_encoder is not None:
            return self.text_encoder
        if self._sampling_text_encoder.module is None:
            self._sampling_text_encoder.module = load_text_encoder(
                self.hparams.pretrained_model_name_or_path, self.hparams.revision, self.hparams.get("variant"))
        return self._sampling_text_encoder.module

    def empty_embedding(self) -> torch.Tensor:
        """``(1, L, D)`` embedding of the empty prompt (caption dropout target), cached."""
        if self._empty_embedding is None or self._empty_embedding.device != self.device:
            self._empty_embedding = self.encode_text([""])
        return self._empty_embedding

    def step_generator(self, micro_batch: int | None = None) -> torch.Generator:
        """Generator for this optimizer step, micro-batch of its accumulation window (default: the current one,
        :attr:`micro_batch`) and rank: randomness that survives a resume. Micro-batch 0 has the key of a run
        without accumulation, so ``accumulate_grad_batches: 1`` draws what it always drew."""
        micro_batch = self.micro_batch if micro_batch is None else micro_batch
        key = f"{self.hparams.noise_seed}-{self.global_step}-{self.global_rank}"
        key = (key if micro_batch == 0 else f"{key}-{micro_batch}").encode()
        seed = int.from_bytes(hashlib.sha256(key).digest()[:8], "little")  # distinct for every (seed, step, rank)
        return torch.Generator(self.device).manual_seed(seed)

    def text_embeddings(self, batch: dict, dropout: bool = False,
                        generator: torch.Generator | None = None) -> torch.Tensor:
        """Embeddings for the batch (cached ``text_embeds`` if present); ``dropout``: a training batch, with the
        objective's caption dropout (to the batch's cached ``empty_text_embeds`` if present, else the encoded
        empty prompt; :meth:`DiffusionObjective.drop_captions` owns the probability)."""
        if "text_embeds" in batch:
            embeds = batch["text_embeds"].to(self.device)
        elif self.hparams.cached_text_embeddings:
            raise UsageError("model.cached_text_embeddings is on but a batch has no text_embeds; preprocess its "
                             "shards with --text-encoder")
        else:
            embeds = self.encode_text(batch["captions"])
        if not dropout:
            return embeds

        def empty() -> torch.Tensor:
            return batch["empty_text_embeds"].to(self.device) if "empty_text_embeds" in batch else \
                self.empty_embedding()

        return self.objective.drop_captions(embeds, empty, generator)

    def diffusion_loss(self, latents: torch.Tensor, embeds: torch.Tensor, timesteps: torch.Tensor | None = None,
                       generator: torch.Generator | None = None, images: bool = False) -> torch.Tensor:
        """The objective's loss for unscaled VAE latents ``(B, F, C, h, w)``; one timestep per clip (``images``:
        an image batch, :func:`ls_video.batch.is_image_batch`)."""

        def denoiser(noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return video_unet_forward(self.unet, noisy, t, embeds.to(noisy.dtype))

        return self.objective.loss(denoiser, latents, generator, timesteps, images)

    # ----------------------------------------------------------------------------- Lightning
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """The diffusion loss of the batch; plus that of ``batch[IMAGE_BATCH]`` when a callback added one. Each
        is logged as ``train/loss_image`` if it is an image batch, else as ``train/loss`` (:mod:`ls_video.batch`)."""
        generator = self.step_generator()
        if self._trainer is not None:  # (back to 0 when the window's optimizer step is taken: NonFiniteGuard)
            self.micro_batch += 1
        if is_data_stop(batch):  # no batch came (DDP): a null micro-batch; the step's agreement ends the run
            return sum((p.sum() * 0.0 for p in self.trainable_parameters()), torch.zeros((), device=self.device))
        parts = [part for part in (batch, batch.get(IMAGE_BATCH)) if part is not None]
        losses = [self.batch_loss(part, generator) for part in parts]
        total = sum(losses[1:], losses[0])
        if not self.note_loss(total):  # the window's step is skipped on every rank (NonFiniteGuard); backward
            return total  # still runs on every rank (DDP stays in step)
        for part, loss in zip(parts, losses, strict=True):
            name = "train/loss_image" if is_image_batch(part) else "train/loss"
            self.log(name, loss, prog_bar=True, batch_size=part["latents"].shape[0])
        return total

    def batch_loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """Training loss of one batch (``latents`` and ``captions`` or ``text_embeds``), caption dropout on."""
        embeds = self.text_embeddings(batch, dropout=True, generator=generator)
        return self.diffusion_loss(batch["latents"], embeds, generator=generator, images=is_image_batch(batch))

    def validation_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        latents = batch["latents"]
        embeds = self.text_embeddings(batch)
        generator = torch.Generator(device=latents.device).manual_seed(batch_idx)
        losses = []
        for t in self.objective.validation_timesteps():
            ts = torch.full((latents.shape[0],), t, device=latents.device, dtype=torch.long)
            losses.append(self.diffusion_loss(latents, embeds, ts, generator, is_image_batch(batch)))
        loss = torch.stack(losses).mean()
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=latents.shape[0])
        return loss

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.unet.parameters() if p.requires_grad]

    def configure_optimizers(self) -> dict:
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer else 1
        optimizer, scheduler = build_optimizer(self.trainable_parameters(), self.optim_config, total)
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
        """Fill the frozen entries back from the loaded base so strict loading succeeds (a sharding strategy
        has loaded the weights already and removed them from ``checkpoint``)."""
        state = checkpoint.get("state_dict")
        if state is None:
            return
        for key, value in self.state_dict().items():
            state.setdefault(key, value)

    def pipeline(self) -> LatentShiftPipeline:
        """A sampling pipeline sharing this module's components (no copies)."""
        pipe = build_pipeline(Parts(vae=self.vae, text_encoder=self.sampling_text_encoder(), tokenizer=self.tokenizer,
                                    unet=self.unet, noise_scheduler=self.noise_scheduler))
        pipe.set_progress_bar_config(disable=True)
        return pipe
