"""Which clips a video gives (the sampling policy) and decoding them into fixed-size frames for the VAE."""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, replace

import numpy as np

from ls_video.datamodules.buckets import Bucket, crop_fraction, longest_fitting, nearest_bucket
from ls_video.datamodules.decode import ShortVideoError, VideoReader
from ls_video.errors import UsageError

CLIP_STARTS = ("start", "middle", "random")


class ClipError(Exception):
    """A video (or one of its clips) that cannot give a clip; ``reason`` is a short key for the report."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class ClipSpec:
    """How clips are cut from each video.

    Args:
        num_frames: frames per clip.
        size: square side in pixels (short side resized to it, then center-cropped).
        fps: frames are the ones nearest the times ``start + k / fps``; ``None`` with ``frame_stride``.
        frame_stride: take every ``frame_stride``-th decoded frame instead (``None``/``None`` means 1).
        clip_start: where the clip window sits: ``start`` of the video, ``middle``, or ``random``
            (seeded by ``seed`` and the video's file name or tar key, so reruns give the same clips).
        clips_per_video: ``K`` non-overlapping windows spread over the video, each its own sample
            (fewer if the video is too short); ``0`` = as many as fit.
        seed: base seed of ``random``.
        buckets: aspect-ratio buckets (``--buckets``): each video's frames cover the nearest one and are
            centre-cropped to it, instead of the ``size`` square (:mod:`ls_video.datamodules.buckets`).
        frame_buckets: clip lengths, longest first (``--frame-buckets``): each video's clips get the longest
            one it can fill, instead of ``num_frames``.
    """

    num_frames: int = 16
    size: int = 256
    fps: float | None = 8
    frame_stride: int | None = None
    clip_start: str = "start"
    clips_per_video: int = 1
    seed: int = 0
    buckets: tuple[Bucket, ...] = ()
    frame_buckets: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.num_frames < 1 or self.size < 1:
            raise UsageError("num_frames and size must be >= 1")
        if self.frame_stride is not None and self.frame_stride < 1 or self.fps is not None and self.fps <= 0:
            raise UsageError("frame_stride must be >= 1 and fps > 0")
        if self.clip_start not in CLIP_STARTS:
            raise UsageError(f"clip_start must be one of {CLIP_STARTS}, got {self.clip_start!r}")
        if self.clips_per_video < 0:
            raise UsageError("clips_per_video must be >= 0 (0 = as many as fit)")
        if any(f < 1 for f in self.frame_buckets):
            raise UsageError("frame_buckets must be >= 1")
        object.__setattr__(self, "frame_buckets", tuple(sorted(set(self.frame_buckets), reverse=True)))
        object.__setattr__(self, "buckets", tuple(self.buckets))

    @property
    def bucketed(self) -> bool:
        return bool(self.buckets or self.frame_buckets)

    @property
    def stride(self) -> int | None:
        """Frame stride when clips are cut by frame count (``--frame-stride``, or neither option given)."""
        return None if self.fps is not None and self.frame_stride is None else (self.frame_stride or 1)

    def step(self, native_fps: float) -> float:
        """Seconds between two frames of a clip."""
        return self.stride / native_fps if self.stride else 1 / self.fps

    def window_starts(self, duration: float | None, native_fps: float, name: str) -> list[float]:
        """Start times (seconds) of this video's clips; ``duration`` is needed unless it is one clip at 0."""
        if self.clip_start == "start" and self.clips_per_video == 1:
            return [0.0]
        if not duration:
            raise ClipError("unreadable", "the video's duration is unknown")
        window = self.num_frames * self.step(native_fps)  # a clip and the gap to the next clip's first frame
        span = (self.num_frames - 1) * self.step(native_fps)  # first to last frame of a clip
        last = duration - 1 / native_fps  # time of the last frame
        if last < span - 1e-6:
            raise ClipError("too_short", f"a clip spans {span:.2f}s, the video {duration:.2f}s")
        fit = math.floor((last - span) / window + 1e-6) + 1
        n = fit if self.clips_per_video == 0 else min(self.clips_per_video, fit)
        slack = max(0.0, last - span - (n - 1) * window)  # free time to spread the windows over
        if self.clip_start == "start":
            starts = [i * (window + (slack / (n - 1) if n > 1 else 0.0)) for i in range(n)]
        elif self.clip_start == "middle":
            starts = [i * window + slack * (i + 1) / (n + 1) for i in range(n)]
        else:
            rng = random.Random(f"{self.seed}:{name}")  # str seeds hash with SHA-512: same in every process
            starts = [i * window + u for i, u in enumerate(sorted(rng.uniform(0, slack) for _ in range(n)))]
        return [round(s, 6) for s in starts]


def choose_bucket(reader: VideoReader, spec: ClipSpec) -> tuple[ClipSpec, dict]:
    """This video's bucket: sets the reader's output size, returns the spec with the chosen clip length and
    the bucket's metadata (``bucket`` ``WxHxF``, ``crop_fraction``); :class:`ClipError` ``too_short`` when
    the video cannot fill the shortest frame bucket."""
    height, width = reader.frame_shape
    if not height or not width:
        raise ClipError("unreadable", "the stream has no frame size")
    bucket = nearest_bucket(height, width, spec.buckets) if spec.buckets else Bucket(spec.size, spec.size)
    reader.size = (bucket.height, bucket.width)
    frames = spec.num_frames
    if spec.frame_buckets:
        duration = reader.duration()
        last = duration - 1 / reader.fps if duration else None
        step = spec.step(reader.fps)
        frames = longest_fitting(spec.frame_buckets, last, step, 0.5 / reader.fps)
        if frames is None:
            shortest = spec.frame_buckets[-1]
            raise ClipError("too_short", f"the video lasts {duration:.2f}s; the shortest frame bucket ({shortest} "
                                         f"frames) spans {(shortest - 1) * step:.2f}s")
    meta = dict(bucket=bucket.name(frames), crop_fraction=crop_fraction(height, width, bucket))
    return replace(spec, num_frames=frames), meta


def load_clips(file: str | os.PathLike | bytes, spec: ClipSpec, name: str | None = None, threads: int = 0,
               seed_key: str | None = None) -> tuple[list[tuple[np.ndarray, dict]], list[ClipError]]:
    """Decode the clips of one video: ``([(frames (F, H, W, 3) uint8, meta), ...], [errors of later clips])``.

    ``name`` names the video in metadata and errors; ``seed_key`` (default: the file name) seeds
    ``clip_start="random"``, so the clips stay the same when the data moves. Only the frames the clips
    need are decoded (see :mod:`ls_video.datamodules.decode`). Raises :class:`ClipError` when the video gives no
    clip at all (``missing``, ``unreadable``, ``too_short``).
    """
    name = str(file) if name is None else name
    seed_key = os.path.basename(name) if seed_key is None else seed_key
    try:
        reader = VideoReader(file, spec.size, threads)
    except FileNotFoundError as err:
        raise ClipError("missing", str(err)) from None
    except Exception as err:  # noqa: BLE001 - FFmpeg's many error types all mean "unreadable"
        raise ClipError("unreadable", f"{type(err).__name__}: {err}") from None
    clips: list[tuple[np.ndarray, dict]] = []
    errors: list[ClipError] = []
    with reader:
        try:
            spec, bucket = choose_bucket(reader, spec) if spec.bucketed else (spec, {})
            duration = None if spec.clip_start == "start" and spec.clips_per_video == 1 else reader.duration()
            starts = spec.window_starts(duration, reader.fps, seed_key)
        except ClipError:
            raise
        except Exception as err:  # noqa: BLE001
            raise ClipError("unreadable", f"{type(err).__name__}: {err}") from None
        fps = None if spec.stride else spec.fps
        for c, start in enumerate(starts):
            try:
                clip = reader.clip(start, spec.num_frames, fps=fps, stride=spec.stride)
            except ShortVideoError as err:
                error = ClipError("too_short", str(err))
            except Exception as err:  # noqa: BLE001
                error = ClipError("unreadable", f"{type(err).__name__}: {err}")
            else:
                meta = dict(source=name, clip=c, start=start, timestamps=clip.times, frame_indices=clip.indices,
                            native_fps=reader.fps, fps=spec.fps if fps else reader.fps / spec.stride,
                            original_size=reader.original_size, **bucket)
                clips.append((clip.frames, meta))
                continue
            if not clips:
                raise error
            rest = len(starts) - c
            errors.append(ClipError(error.reason, f"{rest} of {len(starts)} clips from {start:.2f}s not made: "
                                                  f"{error}"))
            break
    return clips, errors
