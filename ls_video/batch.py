"""A training batch: what datamodules and callbacks hand to ``LatentShiftModule``, and what makes it an image batch.

A batch is a dict with

* ``latents``: raw (unscaled) VAE latents ``(B, F, C, h, w)``;
* ``captions`` (a list of strings) or precomputed ``text_embeds``;
* optionally ``image_batch`` (:data:`IMAGE_BATCH`): a second batch, of images, trained in the same step
  (``ls_video.callbacks.JointImageVideo`` in mode ``"add"``; its loss is added to the batch's).

A batch is an **image batch** when its clips have one frame (``F = 1``); :func:`is_image_batch` is the only
place that decides it. Datamodules and callbacks make image batches by giving them one frame
(``ImageLatentDataModule``, the image stream of ``JointImageVideo``); the module asks once per batch and tells
the objective (``DiffusionObjective.loss(images=...)``, ``ObjectiveConfig.image_weight``) and the logger
(``train/loss_image`` instead of ``train/loss``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

IMAGE_BATCH = "image_batch"


def is_image_batch(batch: Mapping[str, Any]) -> bool:
    """Whether ``batch`` holds images: one frame per clip (``latents`` of shape ``(B, 1, C, h, w)``)."""
    return batch["latents"].shape[1] == 1
