"""Image-video joint training: some steps train on image latents (``F = 1``) instead of clips."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import torch

from datamodules.stream import LatentClipStream, collate


class JointImageVideo(L.Callback):
    """With probability ``probability`` (or every ``every_n_steps`` steps) the step's video batch is
    replaced by a batch of image latents, trained with the same loss and logged as ``train/loss_image``.
    With ``F = 1`` the shift is the identity, so this is plain text-to-image training of the same U-Net.

    Args:
        image_urls: image shards (``F = 1``, or video shards from which one frame is drawn). ``None``
            uses the ``image_urls()`` of the datamodule (the toy datamodule with ``images: true``).
        probability: chance that a step uses images.
        every_n_steps: alternatively, use images every k-th step (overrides ``probability``).
        batch_size: images per image batch.
        seed: seed for the choice of steps and the image stream.
    """

    def __init__(self, image_urls: str | list[str] | None = None, probability: float = 0.0,
                 every_n_steps: int | None = None, batch_size: int = 16, seed: int = 0) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {probability}")
        self.image_urls, self.probability, self.every_n_steps = image_urls, probability, every_n_steps
        self.batch_size, self.seed = batch_size, seed
        self._images = None
        self._rng = random.Random(seed)
        self.image_steps = 0

    def _use_images(self, step: int) -> bool:
        if self.every_n_steps:
            return step % self.every_n_steps == self.every_n_steps - 1
        return self._rng.random() < self.probability

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        urls = self.image_urls
        if urls is None and hasattr(trainer.datamodule, "image_urls"):
            urls = trainer.datamodule.image_urls()
        if not urls:
            raise ValueError("JointImageVideo needs image_urls (or a datamodule with image_urls())")
        stream = LatentClipStream(urls, trainer.global_rank, trainer.world_size, resampled=True, shuffle_buffer=200,
                                  num_frames=1, seed=self.seed + trainer.global_rank)
        loader = torch.utils.data.DataLoader(stream, batch_size=self.batch_size, num_workers=0, collate_fn=collate)
        self._images = iter(loader)
        self._rng = random.Random(f"{self.seed}-{trainer.global_rank}-{trainer.global_step}")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._images is None or not self._use_images(trainer.global_step):
            return
        images = next(self._images)
        batch.pop("text_embeds", None)
        batch["latents"] = images["latents"].to(pl_module.device)
        batch["captions"] = images["captions"]
        self.image_steps += 1
