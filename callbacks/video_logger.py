"""Sample fixed prompts during training and log them as videos."""

from __future__ import annotations

import os
import warnings
from contextlib import nullcontext

import lightning as L
import numpy as np
import torch
from PIL import Image

from ls_video.callbacks.ema import find_ema
from ls_video.callbacks.tensorboard_video import add_video
from ls_video.errors import UsageError
from ls_video.video_io import contact_sheet, write_video


class VideoLogger(L.Callback):
    """Every ``every_n_steps`` optimizer steps and at validation end, sample ``prompts`` with fixed seeds
    through ``LatentShiftPipeline`` and log them: TensorBoard (animated GIF image summaries), Weights &
    Biases (``wandb.Video`` of the written files, with ``lightning.pytorch.loggers.WandbLogger``), plus
    mp4/gif files and a contact-sheet PNG under ``{log_dir}/videos/step_XXXXXX/``.

    Every rank samples (a sharded U-Net needs them all), rank zero writes; any failure is reported as a
    warning and never stops training.

    Args:
        prompts: prompts to sample.
        every_n_steps: sampling period in optimizer steps (0 disables step-based logging).
        on_validation: also sample at the end of each validation.
        seed: seed of the first prompt (prompt i uses seed + i), the same at every log.
        num_frames: frames per video.
        size: ``(height, width)`` in pixels (default: the model's native size).
        num_inference_steps: DDIM steps.
        guidance_scale: classifier-free guidance weight.
        fps: frame rate of the written files and GIFs.
        format: ``mp4`` or ``gif`` files on disk.
        use_ema: sample with EMA weights when the EMA callback is present.
    """

    def __init__(self, prompts: list[str] | None = None, every_n_steps: int = 500, on_validation: bool = True,
                 seed: int = 0, num_frames: int = 8, size: tuple[int, int] | None = None,
                 num_inference_steps: int = 25, guidance_scale: float = 4.0, fps: float = 8, format: str = "mp4",
                 use_ema: bool = True) -> None:
        if format not in ("mp4", "gif"):
            raise UsageError(f"format must be 'mp4' or 'gif', got {format!r}")
        self.prompts = prompts or ["a red square moving left", "a blue circle moving up"]
        self.every_n_steps, self.on_validation, self.seed = every_n_steps, on_validation, seed
        self.num_frames, (self.height, self.width) = num_frames, size or (None, None)
        self.num_inference_steps, self.guidance_scale = num_inference_steps, guidance_scale
        self.fps, self.format, self.use_ema = fps, format, use_ema
        self._last_step = -1
        self._log_dir = "."

    def sample(self, pl_module: L.LightningModule) -> np.ndarray:
        """``(N, F, H, W, 3)`` videos for the fixed prompts and seeds."""
        pipe = pl_module.pipeline()
        generators = [torch.Generator(pl_module.device).manual_seed(self.seed + i) for i in range(len(self.prompts))]
        was_training = pl_module.unet.training
        pl_module.unet.eval()
        try:
            return pipe(self.prompts, num_frames=self.num_frames, height=self.height, width=self.width,
                        num_inference_steps=self.num_inference_steps, guidance_scale=self.guidance_scale,
                        generator=generators).frames
        finally:
            pl_module.unet.train(was_training)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Resolve the output folder on every rank: ``trainer.log_dir`` is a broadcast, so reading it on rank
        zero alone would leave that rank waiting for the others forever."""
        self._log_dir = trainer.log_dir or trainer.default_root_dir

    def log_videos(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Sample on every rank (a sharded U-Net computes only with all ranks); rank zero writes."""
        step = trainer.global_step
        if step == self._last_step:
            return
        self._last_step = step
        try:
            ema = find_ema(trainer) if self.use_ema else None
            with ema.swapped(pl_module) if ema else nullcontext():
                videos = self.sample(pl_module)
            if trainer.is_global_zero:
                self.write(trainer, "video", videos)
        except Exception as err:  # noqa: BLE001 - logging must never stop training
            warnings.warn(f"VideoLogger failed at step {step}: {type(err).__name__}: {err}", stacklevel=1)

    def write(self, trainer: L.Trainer, tag: str, videos: np.ndarray) -> None:
        """Files under ``{log_dir}/videos/step_XXXXXX/``; GIFs to TensorBoard, the files to Weights & Biases."""
        step = trainer.global_step
        out = os.path.join(self._log_dir, "videos", f"step_{step:06d}")
        os.makedirs(out, exist_ok=True)
        writers = [lg.experiment for lg in trainer.loggers if hasattr(lg.experiment, "_get_file_writer")]
        runs = [lg.experiment for lg in trainer.loggers if type(lg).__name__ == "WandbLogger"]
        files = {}
        for i, (prompt, video) in enumerate(zip(self.prompts, videos, strict=True)):
            name = f"{tag}_{i:02d}_{prompt.replace(' ', '_')[:40]}"
            files[f"{tag}/{i:02d} {prompt}"] = path = os.path.join(out, f"{name}.{self.format}")
            write_video(path, video, fps=self.fps)
            for writer in writers:
                add_video(writer, f"{tag}/{i:02d} {prompt}", video, step, self.fps)
        if runs:
            import wandb

            media = {key: wandb.Video(path, format=self.format) for key, path in files.items()}
            for run in runs:
                run.log({**media, "trainer/global_step": step})
        Image.fromarray(contact_sheet(videos)).save(os.path.join(out, f"{tag}_contact_sheet.png"))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0 and trainer.global_step > 0:
            self.log_videos(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.on_validation and not trainer.sanity_checking and trainer.state.fn == "fit":
            self.log_videos(trainer, pl_module)
