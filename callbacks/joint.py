"""Image-video joint training: some steps train on image latents (``F = 1``) instead of clips.

Why a callback that owns a second stream, rather than mixing inside the datamodule (docs/TOY.md,
"Joint image-video training"):

* the choice of step is a pure function of ``(seed, global_step)``: the same on every DDP rank (all ranks
  run an image step together, so no rank waits on another's larger batch) and the same after a resume.
  DataLoader workers prefetch ahead and restart on resume, so they cannot know which optimizer step a
  batch will land on; a mix decided in the datamodule would drift with prefetching and resumes;
* image and video batches have different shapes (``F = 1`` and usually a larger batch: same frame
  budget), so they cannot be collated into one batch by one DataLoader;
* it works with every datamodule (``LatentVideoDataModule``, ``ToyDataModule``, your own) by adding one
  config entry, and keeps the video datamodule unchanged (``ImageLatentDataModule`` alone still trains
  ``F = 1``).
"""

from __future__ import annotations

import math
import re
import warnings
from fractions import Fraction
from typing import Any

import lightning as L
import torch

from ls_video.batch import IMAGE_BATCH
from ls_video.datamodules.latent_video import LatentVideoDataModule
from ls_video.datamodules.stream import LatentClipStream, collate, ignore_stop_signals, resumed_seed
from ls_video.datamodules.toy import ToyDataModule
from ls_video.errors import UsageError

MODES = ("replace", "add")


class JointImageVideo(L.Callback):
    """A share of the steps trains on a batch of image latents, instead of or besides the video batch.

    The image batch is read by its own DataLoader with its own persistent worker processes (never in
    the main process). ``mode="replace"``: it replaces the step's video batch before ``training_step``,
    which costs no time per step (with the default batch size an image step holds as many frames as a
    video step) but gives the videos fewer steps. ``mode="add"``: the step trains the video batch and
    the image batch together (the sum of the two losses; the step costs their frames together), so the
    videos keep every step. The module trains images with the same loss and logs it as
    ``train/loss_image`` (video batches stay ``train/loss``). With ``F = 1`` the shift is the identity,
    so an image batch is plain text-to-image training of the same U-Net.

    Which steps are image steps depends only on ``(seed, global_step)``: every DDP rank makes the same
    choice, and a resumed run continues the same mix.

    Args:
        image_urls: image shards (``F = 1``), or video shards from which one random frame per clip is
            drawn. ``None``: the datamodule's ``image_urls()`` (``ToyDataModule(images=True)``) when it
            has any, else one frame of each clip of the datamodule's training shards.
        ratio: exact share of image steps, spread evenly (0.25: steps 3, 7, 11, ...; 1.0: every step).
        batch_size: images per image batch; ``None`` gives the same frame budget as a video batch
            (video batch size x frames per clip).
        num_workers: worker processes of the image DataLoader (>= 1; persistent).
        shuffle_buffer: samples held in the image stream's shuffle buffer.
        start_step: no image steps before this step (0: from the start).
        caption_regex: removed from the image captions (e.g. ``" moving \\w+"`` for frames drawn from the
            toy world's video shards, so that they read as the image prompts ``"a red square"``).
        seed: seed of the step choice and of the image stream (a resumed run draws new images, seeded by
            the step it resumed at, like the video stream).
        mode: ``"replace"`` the video batch on image steps, or ``"add"`` the image batch to it.
    """

    def __init__(self, image_urls: str | list[str] | None = None, ratio: float | None = None,
                 batch_size: int | None = None,
                 num_workers: int = 1, shuffle_buffer: int = 500, start_step: int = 0,
                 caption_regex: str | None = None, seed: int = 0, mode: str = "replace") -> None:
        if ratio is not None and not 0.0 <= ratio <= 1.0:
            raise UsageError(f"ratio must be in [0, 1], got {ratio}")
        if mode not in MODES:
            raise UsageError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if num_workers < 1:
            raise UsageError("the image stream reads in its own workers: num_workers must be >= 1")
        if batch_size is not None and batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}")
        self.image_urls = image_urls
        self.ratio = None if ratio is None else Fraction(ratio).limit_denominator(10_000)
        self.batch_size, self.num_workers, self.shuffle_buffer = batch_size, num_workers, shuffle_buffer
        self.caption_regex = re.compile(caption_regex) if caption_regex else None
        self.seed, self.start_step, self.mode = seed, start_step, mode
        self.loader: torch.utils.data.DataLoader | None = None
        self._images = None
        self.image_steps = 0

    # -- which steps -------------------------------------------------------------------------------
    def is_image_step(self, step: int) -> bool:
        """Whether optimizer step ``step`` trains on images: a function of ``(seed, step)`` only."""
        if step < self.start_step:
            return False
        if self.ratio is None:
            return False
        return math.floor((step + 1) * self.ratio) > math.floor(step * self.ratio)

    @property
    def enabled(self) -> bool:
        return self.ratio is not None and self.ratio > 0

    # -- the image stream --------------------------------------------------------------------------
    # What the callback reads from the datamodule, when it is not told (``image_urls``, ``batch_size``): a
    # LatentVideoDataModule's training shards, batch size, clip length and remote options, and a ToyDataModule's
    # image shards. Any other datamodule works when both are given.
    @staticmethod
    def shard_datamodule(datamodule: L.LightningDataModule | None, missing: str) -> LatentVideoDataModule:
        """``datamodule`` as the LatentVideoDataModule the callback reads ``missing`` from (a one-line error if not)."""
        if not isinstance(datamodule, LatentVideoDataModule):
            raise UsageError(f"JointImageVideo: set {missing} (the datamodule, {type(datamodule).__name__}, is not a "
                             "LatentVideoDataModule, so the callback cannot read it from there)")
        return datamodule

    def resolve_urls(self, datamodule: L.LightningDataModule | None) -> tuple[Any, str]:
        """The image shards and where they came from (``"image_urls"``, ``"datamodule images"``, ``"video frames"``)."""
        if self.image_urls:
            return self.image_urls, "image_urls"
        shards = self.shard_datamodule(datamodule, "image_urls")
        urls = shards.image_urls() if isinstance(shards, ToyDataModule) else None
        if urls:
            return urls, "datamodule images"
        if shards.train_urls and getattr(shards, "buckets", None) is not None:  # frames of many shapes: no one batch
            raise UsageError("JointImageVideo cannot draw frames from bucketed shards (their shapes differ): "
                             "set image_urls to image shards of one shape")
        if shards.train_urls:
            return shards.train_urls, "video frames"
        raise UsageError("JointImageVideo needs image_urls, or a datamodule with image or training shards")

    def frame_budget(self, datamodule: L.LightningDataModule | None) -> int:
        """Images per image batch: ``batch_size``, or the video batch's frames (batch size x frames)."""
        if self.batch_size is not None:
            return self.batch_size
        shards = self.shard_datamodule(datamodule, "batch_size")
        frames = shards.world.num_frames if isinstance(shards, ToyDataModule) else shards.num_frames
        if not frames:
            raise UsageError("JointImageVideo cannot tell the video batch's frames (num_frames is not set): "
                             "set batch_size")
        return int(shards.batch_size) * int(frames)

    def make_loader(self, trainer: L.Trainer) -> torch.utils.data.DataLoader:
        datamodule = trainer.datamodule
        urls, source = self.resolve_urls(datamodule)
        if source == "video frames" and self.caption_regex is None:
            warnings.warn("JointImageVideo draws single frames from the video shards with their video captions; "
                          "set image_urls (image shards) or caption_regex to train on image captions", stacklevel=2)
        seed = resumed_seed(self.seed, int(trainer.global_step))
        remote = datamodule.remote if isinstance(datamodule, LatentVideoDataModule) else None
        stream = LatentClipStream(urls, trainer.global_rank, trainer.world_size, resampled=True,
                                  shuffle_buffer=self.shuffle_buffer, num_frames=1, seed=seed, remote=remote)
        return torch.utils.data.DataLoader(stream, batch_size=self.frame_budget(datamodule),
                                           num_workers=self.num_workers, collate_fn=self.collate,
                                           persistent_workers=True, prefetch_factor=2,
                                           worker_init_fn=ignore_stop_signals)

    def collate(self, samples: list[dict]) -> dict:
        batch = collate(samples)
        if self.caption_regex is not None:
            batch["captions"] = [self.caption_regex.sub("", c).strip() for c in batch["captions"]]
        batch["data_stats"] = dict(batch["data_stats"], worker=f"image-{batch['data_stats']['worker']}")
        return batch

    # -- hooks -------------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        self.loader = self.make_loader(trainer)
        self._images = iter(self.loader)  # starts the workers now: they prefetch while video steps run

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._images is None or not self.is_image_step(trainer.global_step):
            return
        images = {k: v.to(pl_module.device) if torch.is_tensor(v) else v for k, v in next(self._images).items()}
        self.image_steps += 1
        if self.mode == "add":
            batch[IMAGE_BATCH] = images  # LatentShiftModule.training_step adds its loss
            return
        # The step's video batch is dropped whole and the image batch takes its place (the dict is the
        # object Lightning passes on to training_step, so it is refilled rather than rebound).
        batch.clear()
        batch.update(images)

    def _stop(self) -> None:
        self._images = None  # the iterator's finaliser shuts its workers down
        self.loader = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._stop()
