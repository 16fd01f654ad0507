"""Read and write video files. Frames are ``(F, H, W, 3)`` uint8 arrays throughout.

mp4 is H.264 / yuv420p through PyAV (plays everywhere); gif goes through Pillow. Reading takes
anything FFmpeg decodes (mp4, webm, gif, ...).
"""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np
from PIL import Image

from ls_video.errors import UsageError


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float frames in [0, 1] (or uint8 already) -> uint8."""
    if frames.dtype == np.uint8:
        return frames
    return (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float = 8, crf: int = 18) -> None:
    """Write ``(F, H, W, 3)`` frames as H.264 yuv420p. Odd sizes are padded by one pixel (yuv420p)."""
    frames = to_uint8(np.asarray(frames))
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (F, H, W, 3), got {frames.shape}")
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    import av  # imported on use: training from precomputed shards does not need PyAV

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames:
            # Convert to yuv420p here, not in the stream's own reformatter: fed rgb24, the same frames gave
            # different bytes in about one write in fifty (toy caches differed between builds); now about one in
            # a thousand (libx264 itself still varies now and then; docs/TOY.md).
            yuv = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")
            for packet in stream.encode(yuv):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_gif(path: str | os.PathLike, frames: np.ndarray, fps: float = 8) -> None:
    """Write ``(F, H, W, 3)`` frames as a looping animated GIF."""
    images = [Image.fromarray(f) for f in to_uint8(np.asarray(frames))]
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 8) -> None:
    """Write by extension: ``.mp4`` or ``.gif``."""
    ext = os.path.splitext(str(path))[1].lower()
    if ext == ".mp4":
        write_mp4(path, frames, fps)
    elif ext == ".gif":
        write_gif(path, frames, fps)
    else:
        raise UsageError(f"unsupported video extension {ext!r} (use .mp4 or .gif)")


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Decode every frame: ``(F, H, W, 3)`` uint8 and the stream's frame rate.

    Meant for short clips (generated samples, toy videos): memory grows with the video. Long or large
    videos go through :class:`ls_video.datamodules.decode.VideoReader`, which decodes only a clip's frames.
    Raises ``ValueError`` for files that hold no decodable video frames.
    """
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise UsageError(f"{path}: no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 8.0
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    if not frames:
        raise UsageError(f"{path}: no decodable frames")
    return np.stack(frames), fps


def contact_sheet(videos: np.ndarray, max_frames: int = 16) -> np.ndarray:
    """Grid image: one row per video, one column per frame. ``videos``: ``(N, F, H, W, 3)``."""
    videos = to_uint8(np.asarray(videos))[:, :max_frames]
    n, f, h, w, _ = videos.shape
    sheet = np.full((n * (h + 2), f * (w + 2), 3), 255, dtype=np.uint8)
    for i in range(n):
        for j in range(f):
            sheet[i * (h + 2) : i * (h + 2) + h, j * (w + 2) : j * (w + 2) + w] = videos[i, j]
    return sheet
