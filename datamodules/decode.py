"""Streaming clip decoding with PyAV: only the frames a clip needs, picked by presentation time and
downscaled as they are decoded, so memory is bounded by the clip, not by the video.

Times are seconds from the start of the video stream. A clip is ``num_frames`` frames either at target
times ``start + k / fps`` (the frame whose timestamp is nearest each target, so variable-frame-rate
files give evenly timed clips; exactly halfway, the even-numbered frame, which keeps constant-rate
clips identical to ``round(k * native_fps / fps)``) or, with ``stride``, every ``stride``-th
frame from the one nearest ``start``. Decoding stops one frame past the clip's last frame (the frame that
proves the last pick is the nearest); a clip that starts more than :data:`SEEK_GAP` seconds ahead is
reached by seeking to the keyframe before it and decoding forward.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

SEEK_GAP = 2.0  # seconds ahead of the decoder from which a seek is cheaper than decoding through


class ShortVideoError(ValueError):
    """The video ends before a clip's last frame."""


@dataclass
class Frame:
    """A decoded (full-resolution, not yet converted) frame and where it sits in the stream."""

    time: Fraction  # seconds from the stream start
    seq: int  # frames decoded since the last seek (or since the start)
    index: int  # frame number from the start: counted when decoded from the start, else time * fps
    av_frame: object


@dataclass
class DecodedClip:
    """``frames``: ``(F, H, W, 3)`` uint8 (the reader's output size); ``times`` in seconds; ``decoded``: frames
    decoded for it."""

    frames: np.ndarray
    times: list[float]
    indices: list[int]
    decoded: int


def output_size(height: int, width: int, size: int | tuple[int, int]) -> tuple[int, int]:
    """Resize target ``(h, w)`` covering ``size`` (a square side, or ``(out_h, out_w)``) at the frame's
    aspect ratio; a centre crop to ``size`` follows. For a square: the short side becomes ``size``."""
    out_h, out_w = (size, size) if isinstance(size, int) else size
    scale = max(out_h / height, out_w / width)
    return max(out_h, round(height * scale)), max(out_w, round(width * scale))


class VideoReader:
    """One open video stream; :meth:`clip` decodes clips in increasing start order.

    Args:
        file: a path, raw bytes of a video file, or a binary file object.
        size: frames are resized (area filter) to cover ``size x size`` (or ``(height, width)``) and
            center-cropped to it, as RGB; may be changed before the first :meth:`clip`.
        threads: decoder threads (``0``: FFmpeg picks; ``1``: none).
    """

    def __init__(self, file: str | os.PathLike | bytes | io.IOBase, size: int | tuple[int, int],
                 threads: int = 0) -> None:
        import av
        from av.video.reformatter import VideoReformatter

        self.size = size
        self.container = av.open(io.BytesIO(file) if isinstance(file, bytes) else file)
        if not self.container.streams.video:
            self.container.close()
            raise ValueError("no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO" if threads != 1 else "NONE"
        self.stream.codec_context.thread_count = threads
        self.time_base = self.stream.time_base or Fraction(1, 1000)
        self.start_pts = self.stream.start_time or 0
        self.fps = float(self.stream.average_rate or self.stream.guessed_rate or 0) or 8.0
        self.half_interval = Fraction(1, 2) / Fraction(self.fps).limit_denominator(100000)
        self.decoded = 0  # frames decoded in total
        self.original_size: list[int] | None = None  # [H, W] of the first frame
        self._scaler = VideoReformatter()
        self._frames = self._decode()
        self._seq, self._counted = 0, True  # frame numbers are exact until the first seek
        self._prev: Frame | None = None
        self._cur: Frame | None = None

    def close(self) -> None:
        self.container.close()

    @property
    def frame_shape(self) -> tuple[int, int]:
        """``(height, width)`` of the stream's frames, as its header gives them (before any decoding)."""
        ctx = self.stream.codec_context
        return int(ctx.height or self.stream.height), int(ctx.width or self.stream.width)

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def duration(self) -> float | None:
        """Seconds from the stream start to the end of its last frame (header values, else a packet scan)."""
        if self.stream.duration:
            return float(self.stream.duration * self.time_base)
        if self.container.duration:
            start = self.container.start_time or 0
            return max(0.0, (self.container.duration + start) / 1e6 - float(self.start_pts * self.time_base))
        end = None
        for packet in self.container.demux(self.stream):  # no decoding: timestamps only
            if packet.pts is not None:
                stop = packet.pts + (packet.duration or 0)
                end = stop if end is None else max(end, stop)
        self._seek_to(self.start_pts)
        return None if end is None else float((end - self.start_pts) * self.time_base)

    def _decode(self):
        last = None
        for av_frame in self.container.decode(self.stream):
            if av_frame.pts is not None:
                time = (av_frame.pts - self.start_pts) * self.time_base
            else:  # no timestamp: one average frame interval after the previous frame
                time = Fraction(0) if last is None else last + 2 * self.half_interval
            last = time
            yield av_frame, time

    def _next(self) -> Frame | None:
        """Decode one more frame (``None`` at the end of the stream)."""
        item = next(self._frames, None)
        if item is None:
            return None
        av_frame, time = item
        if self.original_size is None:
            self.original_size = [av_frame.height, av_frame.width]
        index = self._seq if self._counted else round(time * Fraction(self.fps).limit_denominator(100000))
        frame = Frame(time, self._seq, index, av_frame)
        self._seq += 1
        self.decoded += 1
        self._prev, self._cur = self._cur, frame
        return frame

    def _seek_to(self, pts: int) -> None:
        self.container.seek(pts, stream=self.stream, backward=True, any_frame=False)
        self._frames = self._decode()
        self._prev = self._cur = None
        self._seq = 0

    def _seek(self, start: Fraction) -> None:
        """Jump to the keyframe before ``start``; if the demuxer lands after it, decode from the beginning."""
        self._counted = False
        try:
            self._seek_to(self.start_pts + int((start - self.half_interval) / self.time_base))
            first = self._next()
            if first is not None and first.time <= start:
                return
        except Exception:  # noqa: BLE001 - FFmpeg refuses seeks in some containers; decode through instead
            pass
        self._seek_to(self.start_pts)
        self._counted = True

    def _advance_to(self, target: Fraction) -> Frame:
        """The decoded frame nearest ``target`` (decoding until one is at or past it)."""
        while self._cur is None or self._cur.time < target:
            if self._next() is None:
                break
        cur, prev = self._cur, self._prev
        if cur is None:
            raise ValueError("no decodable frames")
        if cur.time >= target:
            if prev is None or target - prev.time > cur.time - target:
                return cur
            if target - prev.time < cur.time - target:
                return prev
            return prev if prev.index % 2 == 0 else cur  # exactly halfway: the even frame, as round() does
        if target - cur.time <= self.half_interval:  # the stream ended, but its last frame is close enough
            return cur
        raise ShortVideoError(f"needs a frame at {float(target):.3f}s, the video ends at {float(cur.time):.3f}s")

    def _advance_seq(self, seq: int) -> Frame:
        while self._cur.seq < seq:
            if self._next() is None:
                raise ShortVideoError(f"needs {seq - self._cur.seq} more frames after {float(self._cur.time):.3f}s")
        return self._cur

    def _convert(self, frame: Frame) -> np.ndarray:
        av_frame = frame.av_frame
        h, w = output_size(av_frame.height, av_frame.width, self.size)
        if (h, w) == (av_frame.height, av_frame.width):  # colour conversion only, exactly as to_ndarray
            rgb = self._scaler.reformat(av_frame, format="rgb24", threads=1).to_ndarray()
        else:  # downscale and convert in one swscale pass; the area filter averages like an antialiased resize
            rgb = self._scaler.reformat(av_frame, width=w, height=h, format="rgb24", interpolation="AREA",
                                        threads=1).to_ndarray()
        out_h, out_w = (self.size, self.size) if isinstance(self.size, int) else self.size
        top, left = (h - out_h) // 2, (w - out_w) // 2
        return rgb[top : top + out_h, left : left + out_w]

    def clip(self, start: float, num_frames: int, fps: float | None = None, stride: int | None = None) -> DecodedClip:
        """Decode one clip starting at ``start`` seconds: ``num_frames`` frames at ``fps`` or every ``stride``-th."""
        if (fps is None) == (stride is None):
            raise ValueError("give exactly one of fps and stride")
        start_t = Fraction(start).limit_denominator(1000000)
        decoded_before = self.decoded
        position = self._cur.time if self._cur is not None else Fraction(0)
        if start_t - position > SEEK_GAP:
            self._seek(start_t)
        picks: list[Frame] = []
        arrays: list[np.ndarray] = []

        def take(frame: Frame) -> Frame:  # convert as picked; a frame picked twice is converted once
            arrays.append(arrays[-1] if picks and frame is picks[-1] else self._convert(frame))
            picks.append(frame)
            return frame

        if fps is not None:
            step = 1 / Fraction(fps).limit_denominator(1000000)
            for k in range(num_frames):
                take(self._advance_to(start_t + k * step))
        else:
            first = take(self._advance_to(start_t))
            for k in range(1, num_frames):
                take(self._advance_seq(first.seq + k * stride))
        return DecodedClip(np.stack(arrays), [round(float(f.time), 6) for f in picks], [f.index for f in picks],
                           self.decoded - decoded_before)
