"""Decode a video file into a fixed-length, fixed-size clip ready for the VAE."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ls_video.video_io import read_video


class ClipError(Exception):
    """A video that cannot give a clip; ``reason`` is a short key for the report."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def frame_indices(num_available: int, native_fps: float, num_frames: int, fps: float | None,
                  frame_stride: int | None) -> list[int]:
    """Indices of the clip's frames from the start: every ``frame_stride``-th frame, or resampled
    from ``native_fps`` to ``fps`` (nearest frame). Raises ``ClipError('too_short')``."""
    if frame_stride is not None:
        idx = [k * frame_stride for k in range(num_frames)]
    elif fps is not None:
        idx = [int(round(k * native_fps / fps)) for k in range(num_frames)]
    else:
        idx = list(range(num_frames))
    if idx[-1] >= num_available:
        raise ClipError("too_short", f"needs frame {idx[-1]}, video has {num_available}")
    return idx


def resize_center_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """``(F, 3, H, W)`` floats -> ``(F, 3, size, size)``: shortest side to ``size``, then center crop."""
    h, w = frames.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        frames = F.interpolate(frames, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    return frames[..., top : top + size, left : left + size]


def load_clip(path: str, num_frames: int, size: int, fps: float | None = None,
              frame_stride: int | None = None) -> tuple[torch.Tensor, dict]:
    """``(F, 3, size, size)`` frames in [-1, 1] plus metadata. Raises :class:`ClipError`."""
    try:
        video, native_fps = read_video(path)
    except FileNotFoundError as err:
        raise ClipError("missing", str(err)) from None
    except Exception as err:  # noqa: BLE001 - FFmpeg's many error types all mean "unreadable"
        raise ClipError("unreadable", f"{type(err).__name__}: {err}") from None
    idx = frame_indices(len(video), native_fps, num_frames, fps, frame_stride)
    frames = torch.from_numpy(np.ascontiguousarray(video[idx])).permute(0, 3, 1, 2).float() / 127.5 - 1
    frames = resize_center_crop(frames, size).clamp(-1, 1)
    meta = dict(source=str(path), frame_indices=idx, native_fps=native_fps, fps=fps or native_fps / (frame_stride or 1),
                original_size=[int(video.shape[1]), int(video.shape[2])])
    return frames, meta
