"""Deterministic "moving shapes" world: one square or circle of a palette colour crossing a black
frame in a straight line. Captions: ``"a {color} {shape} moving {direction}"`` (videos) and
``"a {color} {shape}"`` (single-frame images).

Train and validation never share a clip: every clip's parameters (shape, colour, direction, start,
speed) hash to one split, and each split only keeps its own.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from ls_video.errors import UsageError
from ls_video.video_io import write_video

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 90, 230),
    "yellow": (230, 210, 40),
}
SHAPES = ("square", "circle")
# unit step (dx, dy) in image coordinates (y grows downwards)
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SPLITS = ("train", "val")
# The words of the toy captions: the vocabulary of the toy tokenizer (ls_video/toy/tokenizer.py).
TOY_WORDS = "a red green blue yellow square circle moving left right up down".split()
# Concepts the base and the video fine-tuning never see (issue #19's personalisation, ls_video/toy/personalise.py).
# Kept out of COLORS / SHAPES so the default world, its clips and its caches are unchanged.
NEW_COLORS: dict[str, tuple[int, int, int]] = {"purple": (150, 60, 200)}
NEW_SHAPES = ("triangle",)
ALL_COLORS: dict[str, tuple[int, int, int]] = {**COLORS, **NEW_COLORS}
ALL_SHAPES = SHAPES + NEW_SHAPES


def all_prompts() -> list[str]:
    """The 32 video prompts: every colour x shape x direction."""
    return [f"a {c} {s} moving {d}" for c in COLORS for s in SHAPES for d in DIRECTIONS]


def new_concept_combos() -> list[tuple[str, str]]:
    """Every ``(colour, shape)`` with purple or a triangle in it: 7 with one new colour and one new shape."""
    return [(c, s) for c in ALL_COLORS for s in ALL_SHAPES if c in NEW_COLORS or s in NEW_SHAPES]


def new_concept_prompts() -> list[str]:
    """The 28 video prompts with a new concept: :func:`new_concept_combos` x 4 directions."""
    return [f"a {c} {s} moving {d}" for c, s in new_concept_combos() for d in DIRECTIONS]


def image_prompts() -> list[str]:
    """The 8 image prompts: every colour x shape (the base's captions; one-frame samples of them are images)."""
    return [f"a {c} {s}" for c in COLORS for s in SHAPES]


@dataclass
class ToyClip:
    """One clip's parameters; ``positions[t]`` is the object's top-left ``(x, y)`` at frame ``t``."""

    shape: str
    color: str
    direction: str
    start: tuple[int, int]
    speed: int
    positions: list[tuple[int, int]] = field(default_factory=list)
    frame: tuple[int, int] | None = None  # (width, height) when the world has frame_sizes; else size x size

    @property
    def caption(self) -> str:
        return f"a {self.color} {self.shape} moving {self.direction}"

    @property
    def image_caption(self) -> str:
        return f"a {self.color} {self.shape}"

    def key(self) -> str:
        key = f"{self.shape}-{self.color}-{self.direction}-{self.start[0]}-{self.start[1]}-{self.speed}"
        return key if self.frame is None else f"{key}-{self.frame[0]}x{self.frame[1]}"


def _start(rng: np.random.Generator, step: int, room: int, travel: int) -> int:
    """Start coordinate on one axis so that ``travel`` pixels along ``step`` stay inside ``[0, room]``."""
    if step == 0:
        return int(rng.integers(0, room + 1))
    if step < 0:
        return int(rng.integers(travel, room + 1))
    return int(rng.integers(0, room - travel + 1))


@dataclass
class ToyWorld:
    """Settings of the world; a seed fixes every clip.

    Args:
        size: frame height and width in pixels.
        num_frames: frames per clip.
        fps: frame rate of the written files.
        object_size: side (square) or diameter (circle) of the object in pixels.
        min_travel: least distance covered over the clip, as a fraction of ``size``.
        max_speed: fastest speed in pixels per frame (default: as fast as still fits in the frame).
        val_fraction: share of the clip space reserved for validation.
        frame_sizes: ``[(width, height), ...]``: each clip is drawn in one of these frame sizes, at random
            (aspect-ratio buckets, docs/TOY.md); speeds then fit the smallest side, ``min_travel`` is a
            fraction of it. ``None`` (default): every clip is ``size x size``, exactly as before.
    """

    size: int = 64
    num_frames: int = 16
    fps: int = 8
    object_size: int = 16
    min_travel: float = 0.25
    max_speed: int | None = None
    val_fraction: float = 0.1
    frame_sizes: list[tuple[int, int]] | None = None
    wrap: bool = False

    def __post_init__(self) -> None:
        if self.wrap and self.frame_sizes is not None:
            raise UsageError("wrap: true needs square frames (no frame_sizes)")
        if self.frame_sizes is not None:
            self.frame_sizes = [tuple(int(v) for v in wh) for wh in self.frame_sizes]
            if not self.frame_sizes or any(len(wh) != 2 or min(wh) <= self.object_size for wh in self.frame_sizes):
                raise UsageError(f"frame_sizes must be (width, height) pairs larger than the object "
                                 f"({self.object_size}px), got {self.frame_sizes}")

    def side(self) -> int:
        """The shortest frame side: ``size``, or the smallest side of ``frame_sizes``."""
        return min(min(wh) for wh in self.frame_sizes) if self.frame_sizes else self.size

    def speeds(self) -> list[int]:
        """Integer pixel speeds that cross ``min_travel`` of the (shortest) frame side and stay inside it."""
        side = self.side()
        room = side - self.object_size
        frames = max(1, self.num_frames - 1)
        lo = max(1, int(np.ceil(self.min_travel * side / frames)))
        hi = room // frames
        if self.max_speed is not None:
            hi = min(hi, self.max_speed)
        if hi < lo:
            raise UsageError(f"a {self.object_size}px object cannot travel {self.min_travel:.0%} of a "
                             f"{side}px frame in {self.num_frames} frames; make the world bigger")
        return list(range(lo, hi + 1))

    def split_of(self, clip: ToyClip) -> str:
        digest = hashlib.sha1(clip.key().encode()).digest()
        return "val" if int.from_bytes(digest[:4], "little") / 2**32 < self.val_fraction else "train"

    def sample_clip(self, rng: np.random.Generator, split: str = "train", colors: Sequence[str] | None = None,
                    shapes: Sequence[str] | None = None) -> ToyClip:
        """Draw clips until one belongs to ``split``; ``colors`` / ``shapes`` default to :data:`COLORS` /
        :data:`SHAPES` (pass names from :data:`ALL_COLORS` / :data:`ALL_SHAPES` for the new concepts)."""
        if split not in SPLITS:
            raise UsageError(f"split must be one of {SPLITS}")
        colors = list(COLORS) if colors is None else list(colors)
        shapes = SHAPES if shapes is None else tuple(shapes)
        for name in [*colors, *shapes]:
            if name not in ALL_COLORS and name not in ALL_SHAPES:
                raise UsageError(f"unknown colour or shape {name!r}")
        while True:
            shape = shapes[rng.integers(len(shapes))]
            color = colors[rng.integers(len(colors))]
            direction = list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
            speed = int(rng.choice(self.speeds()))
            frame = tuple(self.frame_sizes[rng.integers(len(self.frame_sizes))]) if self.frame_sizes else None
            dx, dy = DIRECTIONS[direction]
            travel = speed * (self.num_frames - 1)
            width, height = frame or (self.size, self.size)
            rooms = (width - self.object_size, height - self.object_size)

            if self.wrap:
                start = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            else:
                start = (_start(rng, dx, rooms[0], travel), _start(rng, dy, rooms[1], travel))
            clip = ToyClip(shape, color, direction, start, speed, frame=frame)
            if self.split_of(clip) == split:
                clip.positions = self.positions(clip, self.num_frames)
                return clip

    def positions(self, clip: ToyClip, num_frames: int) -> list[tuple[int, int]]:
        """The object's top-left ``(x, y)`` over ``num_frames`` frames (any length: wrapped when ``wrap``)."""
        dx, dy = DIRECTIONS[clip.direction]
        pts = [(clip.start[0] + dx * clip.speed * t, clip.start[1] + dy * clip.speed * t) for t in range(num_frames)]
        if self.wrap:
            width, height = clip.frame or (self.size, self.size)
            pts = [(x % width, y % height) for x, y in pts]
        return pts

    def render_frame(self, clip: ToyClip, position: tuple[int, int]) -> np.ndarray:
        """``(H, W, 3)`` uint8 frame (``size x size``, or the clip's frame size) with the object at ``position``."""
        width, height = clip.frame or (self.size, self.size)
        if self.wrap:  # draw at the origin, then roll: the parts past an edge come back at the opposite one
            frame = replace(self, wrap=False).render_frame(clip, (0, 0))
            return np.roll(frame, (position[1] % height, position[0] % width), axis=(0, 1))
        frame = np.zeros((height, width, 3), np.uint8)
        x, y, s = position[0], position[1], self.object_size
        color = ALL_COLORS[clip.color]
        if clip.shape == "square":
            frame[y : y + s, x : x + s] = color
        elif clip.shape == "triangle":
            # apex up: the half-width grows from 0 at the top edge to s/2 at the bottom edge
            yy, xx = np.mgrid[0:height, 0:width]
            row = yy + 0.5 - y
            inside = (row > 0) & (row < s) & (np.abs(xx + 0.5 - (x + s / 2)) <= row / 2 + 0.25)
            frame[inside] = color
        else:
            yy, xx = np.mgrid[0:height, 0:width]
            r = s / 2
            inside = (xx + 0.5 - (x + r)) ** 2 + (yy + 0.5 - (y + r)) ** 2 <= r * r
            frame[inside] = color
        return frame

    def render(self, clip: ToyClip) -> np.ndarray:
        """``(F, H, W, 3)`` uint8 video."""
        return np.stack([self.render_frame(clip, p) for p in clip.positions])

    def clips(self, n: int, split: str = "train", seed: int = 0, colors: Sequence[str] | None = None,
              shapes: Sequence[str] | None = None) -> list[ToyClip]:
        rng = np.random.default_rng([seed, SPLITS.index(split)])
        return [self.sample_clip(rng, split, colors, shapes) for _ in range(n)]

    def write_videos(self, out_dir: str | os.PathLike, n: int, split: str = "train", seed: int = 0) -> list[str]:
        """Write ``n`` mp4 clips with same-name ``.txt`` captions and ``.json`` ground truth."""
        os.makedirs(out_dir, exist_ok=True)
        paths = []
        for i, clip in enumerate(self.clips(n, split, seed)):
            stem = os.path.join(out_dir, f"{split}_{i:06d}")
            write_video(stem + ".mp4", self.render(clip), fps=self.fps)
            with open(stem + ".txt", "w") as f:
                f.write(clip.caption)
            with open(stem + ".json", "w") as f:
                json.dump({**asdict(clip), "world": asdict(self)}, f)
            paths.append(stem + ".mp4")
        return paths

    def images(self, n: int, split: str = "train", seed: int = 0, colors: Sequence[str] | None = None,
               shapes: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
        """``n`` single frames ``(n, size, size, 3)`` and their ``"a {color} {shape}"`` captions (square also
        with ``frame_sizes``: image batches need one shape)."""
        if self.frame_sizes:
            return replace(self, frame_sizes=None).images(n, split, seed, colors, shapes)
        rng = np.random.default_rng([seed, SPLITS.index(split), 1])
        frames, captions = [], []
        for clip in self.clips(n, split, seed, colors, shapes):
            t = int(rng.integers(len(clip.positions)))
            frames.append(self.render_frame(clip, clip.positions[t]))
            captions.append(clip.image_caption)
        return np.stack(frames), captions

    def write_images(self, out_dir: str | os.PathLike, n: int, split: str = "train", seed: int = 0) -> list[str]:
        """Write ``n`` PNG images with ``.txt`` captions (one-frame "videos" for joint training)."""
        from PIL import Image

        os.makedirs(out_dir, exist_ok=True)
        frames, captions = self.images(n, split, seed)
        paths = []
        for i, (frame, caption) in enumerate(zip(frames, captions, strict=True)):
            stem = os.path.join(out_dir, f"{split}_img_{i:06d}")
            Image.fromarray(frame).save(stem + ".png")
            with open(stem + ".txt", "w") as f:
                f.write(caption)
            paths.append(stem + ".png")
        return paths
