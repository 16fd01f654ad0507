"""Synthetic H.264 videos for tests and benchmarks: a panning texture with a moving box, or flat frames
whose grey level encodes the frame number; any size, length, keyframe interval and (variable) timing."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from fractions import Fraction

import numpy as np
from PIL import Image

TIME_BASE = Fraction(1, 1000)  # timestamps are written in milliseconds


def index_level(index: int) -> int:
    """Grey level of frame ``index`` in the ``"index"`` pattern (survives H.264 within +-3)."""
    return 8 + 8 * (index % 30)


def _texture(width: int, height: int, seed: int) -> np.ndarray:
    """Smooth random RGB texture ``(height, width, 3)`` uint8 (upsampled noise, like natural footage)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC))


def synthetic_frames(num_frames: int, width: int, height: int, pattern: str = "texture",
                     seed: int = 0) -> Iterator[np.ndarray]:
    """``(height, width, 3)`` uint8 frames, one at a time (never the whole video in memory)."""
    if pattern == "index":
        for i in range(num_frames):
            yield np.full((height, width, 3), index_level(i), np.uint8)
        return
    if pattern != "texture":
        raise ValueError(f"pattern must be 'texture' or 'index', got {pattern!r}")
    speed = 2  # pixels per frame; the texture wraps around
    texture = _texture(width + 64, height, seed)
    box = max(4, min(width, height) // 6)
    for i in range(num_frames):
        frame = np.roll(texture, -speed * i, axis=1)[:, :width].copy()
        x = (3 * i) % max(1, width - box)
        y = (height - box) // 2
        frame[y : y + box, x : x + box] = (230, 40, 40)
        yield frame


def write_synthetic_video(path: str | os.PathLike, num_frames: int, width: int = 64, height: int = 64,
                          fps: float = 25, pattern: str = "texture", times: Sequence[float] | None = None,
                          keyint: int | None = None, preset: str = "veryfast", crf: int = 23, seed: int = 0) -> str:
    """Write an H.264 / yuv420p mp4 (with B-frames, as x264 makes them).

    ``times``: presentation time of each frame in seconds (strictly increasing), for variable frame rate
    files; default ``i / fps``. ``keyint``: frames between keyframes (x264's default when ``None``).
    """
    import av

    if times is not None and len(times) != num_frames:
        raise ValueError(f"times has {len(times)} entries for {num_frames} frames")
    pts = [round(t / TIME_BASE) for t in times] if times is not None else None
    if pts is not None and any(b <= a for a, b in zip(pts, pts[1:], strict=False)):
        raise ValueError("times must be strictly increasing (at millisecond resolution)")
    options = {"crf": str(crf), "preset": preset}
    if keyint is not None:
        options.update({"g": str(keyint), "keyint_min": str(keyint)})
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000), options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = TIME_BASE
        for i, rgb in enumerate(synthetic_frames(num_frames, width, height, pattern, seed)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = (pts[i] if pts is not None else round(i / fps / TIME_BASE)), TIME_BASE
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)
