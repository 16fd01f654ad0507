"""Animated-GIF image summaries for TensorBoard.

``SummaryWriter.add_video`` needs moviepy and silently logs nothing without it (and moviepy 2.x
broke it), so we encode the GIF ourselves and write a standard image summary, which TensorBoard's
image dashboard plays as an animation.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from tensorboard.compat.proto.summary_pb2 import Summary

from ls_video.video_io import to_uint8


def gif_bytes(frames: np.ndarray, fps: float = 8) -> bytes:
    """``(F, H, W, 3)`` frames -> animated GIF bytes."""
    images = [Image.fromarray(f) for f in to_uint8(np.asarray(frames))]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return buf.getvalue()


def video_summary(tag: str, frames: np.ndarray, fps: float = 8) -> Summary:
    """A TensorBoard ``Summary`` holding ``frames`` as an animated GIF image."""
    h, w = frames.shape[1:3]
    image = Summary.Image(height=h, width=w, colorspace=3, encoded_image_string=gif_bytes(frames, fps))
    return Summary(value=[Summary.Value(tag=tag, image=image)])


def add_video(writer, tag: str, frames: np.ndarray, step: int, fps: float = 8) -> None:
    """Log ``(F, H, W, 3)`` frames to a ``torch.utils.tensorboard.SummaryWriter``."""
    writer._get_file_writer().add_summary(video_summary(tag, frames, fps), step)
    writer.flush()
