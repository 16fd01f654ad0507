"""Toy-world accuracy from decoded frames only (no access to the generator's state).

Per frame the object is the set of pixels brighter than ``threshold`` on the black background;
its centroid is tracked over frames. Direction is the dominant axis and sign of the first-to-last
displacement ("static" when it moves less than ``min_motion`` pixels); ``step_acc`` is the share
of frame-to-frame steps that go the prompted way, so a blob reappearing at typical positions does
not count as motion. Colour is the nearest palette entry of the object's mean colour; shape is
square when the object fills its bounding box (a disc fills about pi/4 of it). The palette and the
shapes include the concepts only personalised models know (purple, an apex-up triangle: it fills
about 5/8 of its box and puts about 3/10 of its area in the box's upper half, a disc 1/2), so a model
asked for them is judged against them and one asked for an old concept cannot pass by drawing a new one.

``wrap=True`` (every scoring function) judges clips of a wrapped world (``ToyWorld(wrap=True)``, a torus):
centroids are circular means, steps are the shortest way round, a direction is that of the summed steps
(the unwrapped track), and shapes / object counts see an object split over an edge as one.
"""

from __future__ import annotations

import re

import numpy as np

from ls_video.errors import UsageError
from ls_video.toy.world import ALL_COLORS, DIRECTIONS

PROMPT = re.compile(r"a (\w+) (\w+)(?: moving (\w+))?")


def parse_prompt(prompt: str) -> dict:
    """``"a red square moving left"`` -> ``{"color": "red", "shape": "square", "direction": "left"}``."""
    m = PROMPT.fullmatch(prompt.strip())
    if not m:
        raise UsageError(f"not a toy prompt: {prompt!r}")
    return {"color": m.group(1), "shape": m.group(2), "direction": m.group(3)}


def object_mask(frame: np.ndarray, threshold: int = 80) -> np.ndarray:
    return frame.astype(np.int16).max(-1) > threshold


def classify_color(pixels: np.ndarray) -> str:
    mean = pixels.reshape(-1, 3).astype(float).mean(0)
    return min(ALL_COLORS, key=lambda c: float(((np.array(ALL_COLORS[c]) - mean) ** 2).sum()))


def classify_shape(mask: np.ndarray) -> str:
    """Square above 0.89 fill of the bounding box; triangle when the object is bottom-heavy (under 0.42 of
    its area in the box's upper half: an apex-up triangle has 0.3, a disc 0.5) with a triangle-like fill
    (0.45-0.8: a rendered triangle fills 0.625, a disc 0.81); circle otherwise, as before the triangle
    existed (so smeared or doubled blobs, fill 0.2-0.35, still count as circles, not triangles)."""
    ys, xs = np.nonzero(mask)
    height = ys.max() - ys.min() + 1
    fill = mask.sum() / (height * (xs.max() - xs.min() + 1))
    if fill > 0.89:
        return "square"
    top = float((ys < ys.min() + height / 2).mean())
    return "triangle" if top < 0.42 and 0.45 <= fill <= 0.8 else "circle"


def _centroid(mask: np.ndarray, wrap: bool) -> tuple[float, float] | None:
    """``(x, y)`` mean of the mask's pixels; with ``wrap`` the circular mean on the torus (exact for an object
    split over an edge), in ``[0, W)`` x ``[0, H)``; ``None`` for an empty mask."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    if not wrap:
        return (xs.mean(), ys.mean())
    out = []
    for v, n in ((xs, mask.shape[1]), (ys, mask.shape[0])):
        a = 2 * np.pi * (v + 0.5) / n
        out.append(float(np.arctan2(np.sin(a).mean(), np.cos(a).mean()) * n / (2 * np.pi) - 0.5) % n)
    return (out[0], out[1])


def _step(a: tuple[float, float], b: tuple[float, float], shape: tuple[int, int] | None) -> tuple[float, float]:
    """Displacement ``a -> b``; with a frame ``shape`` ``(H, W)`` (wrapped world) the shortest way round."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    if shape is not None:
        dx, dy = (dx + shape[1] / 2) % shape[1] - shape[1] / 2, (dy + shape[0] / 2) % shape[0] - shape[0] / 2
    return (dx, dy)


def _centered(mask: np.ndarray, centroid: tuple[float, float] | None) -> np.ndarray:
    """The mask rolled so that ``centroid`` sits mid-frame (a wrapped object made whole for its bounding box)."""
    if centroid is None:
        return mask
    h, w = mask.shape
    return np.roll(mask, (h // 2 - int(round(centroid[1])), w // 2 - int(round(centroid[0]))), axis=(0, 1))


def _track(centroids: list, shape: tuple[int, int] | None) -> tuple[float, float]:
    """Displacement from the first to the last present centroid: summed shortest steps when wrapped."""
    pts = [c for c in centroids if c is not None]
    if shape is None:
        return (pts[-1][0] - pts[0][0], pts[-1][1] - pts[0][1])
    steps = [_step(a, b, shape) for a, b in zip(pts[:-1], pts[1:], strict=True)]
    return (float(sum(d[0] for d in steps)), float(sum(d[1] for d in steps)))


def direction_of(dx: float, dy: float, min_motion: float) -> str:
    if max(abs(dx), abs(dy)) < min_motion:
        return "static"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def analyze_video(frames: np.ndarray, threshold: int = 80, min_motion: float | None = None,
                  wrap: bool = False) -> dict:
    """Track the object in ``(F, H, W, 3)`` uint8 frames (``wrap``: on a torus, see the module doc).

    Returns ``centroids`` (``None`` where no object), ``present`` (share of frames with an object),
    ``size_cv`` (coefficient of variation of the object's area), ``direction``, ``color``, ``shape``.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)
    min_motion = frames.shape[2] / 16 if min_motion is None else min_motion
    masks = [object_mask(f, threshold) for f in frames]
    centroids = [_centroid(m, wrap) for m in masks]
    areas = np.array([m.sum() for m in masks], dtype=float)
    present = [c for c in centroids if c is not None]
    out = {"centroids": centroids, "present": len(present) / len(frames),
           "size_cv": float(areas.std() / areas.mean()) if areas.mean() > 0 else float("inf")}
    if len(present) >= 2:
        dx, dy = _track(centroids, frames.shape[1:3] if wrap else None)
        out["direction"] = direction_of(dx, dy, min_motion)
    else:
        out["direction"] = "static"
    best = int(np.argmax(areas))
    if areas[best] > 0:
        out["color"] = classify_color(frames[best][masks[best]])
        out["shape"] = classify_shape(_centered(masks[best], centroids[best]) if wrap else masks[best])
    else:
        out["color"] = out["shape"] = None
    return out


def step_accuracy(centroids: list, direction: str, frame_shape: tuple[int, int] | None = None) -> float:
    """Share of frame-to-frame steps whose displacement points the prompted way (missing = wrong);
    ``frame_shape`` ``(H, W)``: a wrapped world, each step taken the shortest way round."""
    ux, uy = DIRECTIONS[direction]
    steps = [_step(a, b, frame_shape) for a, b in zip(centroids[:-1], centroids[1:], strict=True)
             if a is not None and b is not None]
    good = sum(1 for dx, dy in steps
               if dx * ux + dy * uy > 0.5 and abs(dx * uy) + abs(dy * ux) < abs(dx * ux + dy * uy))
    return good / max(1, len(centroids) - 1)


def score(videos: list[np.ndarray], prompts: list[str], wrap: bool = False) -> dict:
    """Mean accuracies over videos: ``direction_acc``, ``step_acc``, ``color_acc``, ``shape_acc``,
    ``consistency`` (object in every frame with stable size, CV < 0.25) and per-video rows
    (``wrap``: clips of a wrapped world)."""
    rows = []
    for video, prompt in zip(videos, prompts, strict=True):
        want = parse_prompt(prompt)
        got = analyze_video(video, wrap=wrap)
        row = {"prompt": prompt, "direction": got["direction"], "color": got["color"], "shape": got["shape"],
               "color_ok": got["color"] == want["color"], "shape_ok": got["shape"] == want["shape"],
               "consistent": got["present"] == 1.0 and got["size_cv"] < 0.25}
        if want["direction"] is not None:
            row["direction_ok"] = got["direction"] == want["direction"]
            row["step_acc"] = step_accuracy(got["centroids"], want["direction"],
                                            np.asarray(video).shape[1:3] if wrap else None)
        rows.append(row)

    def mean(key: str) -> float | None:
        vals = [float(r[key]) for r in rows if key in r]
        return sum(vals) / len(vals) if vals else None

    return {"n": len(rows), "direction_acc": mean("direction_ok"), "step_acc": mean("step_acc"),
            "color_acc": mean("color_ok"), "shape_acc": mean("shape_ok"), "consistency": mean("consistent"),
            "rows": rows}


# --- Long-range metrics (issue 29): does a clip hold together over 16 frames? ---------------------------


def count_objects(mask: np.ndarray, min_pixels: int = 4, wrap: bool = False) -> int:
    """Connected (4-neighbour) regions of ``mask`` with at least ``min_pixels`` pixels (specks ignored);
    ``wrap``: on a torus (a region over an edge joins its other part at the opposite edge)."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    count = 0
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        seen[y0, x0], stack, size = True, [(y0, x0)], 0
        while stack:
            y, x = stack.pop()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if wrap:
                    ny, nx = ny % h, nx % w
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        count += size >= min_pixels
    return count


def _mode(values: list) -> object:
    return max(set(values), key=values.count) if values else None


def long_range(frames: np.ndarray, direction: str, threshold: int = 80, max_spread: float = 0.5,
               wrap: bool = False) -> dict:
    """Long-range checks of one ``(F, H, W, 3)`` uint8 clip prompted to move ``direction``.

    ``identity``: the most common colour and shape of the first quarter of the frames equal those of the
    last quarter (every frame of both quarters has an object). ``spread``: RMS deviation of the per-frame
    centroid displacement from its mean, relative to the mean's length (0 for constant velocity, ``inf``
    when static or an object is missing); ``constant`` is ``spread <= max_spread``. ``direction_all`` /
    ``direction_late``: the first-to-last displacement over the whole clip / its second half goes the
    prompted way. ``single``: exactly one object in every frame.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)
    n, size = len(frames), frames.shape[2]
    masks = [object_mask(f, threshold) for f in frames]
    quarter = max(1, n // 4)
    cents = [_centroid(m, wrap) for m in masks]
    torus = frames.shape[1:3] if wrap else None

    def traits(idx: range) -> tuple[list, list]:
        kept = [i for i in idx if masks[i].any()]
        return ([classify_color(frames[i][masks[i]]) for i in kept],
                [classify_shape(_centered(masks[i], cents[i]) if wrap else masks[i]) for i in kept])

    (c0, s0), (c1, s1) = traits(range(quarter)), traits(range(n - quarter, n))
    identity = len(c0) == len(c1) == quarter and _mode(c0) == _mode(c1) and _mode(s0) == _mode(s1)
    spread = float("inf")
    if all(c is not None for c in cents) and n >= 2:
        d = np.array([_step(a, b, torus) for a, b in zip(cents[:-1], cents[1:], strict=True)], dtype=float)
        mean = d.mean(0)
        if np.linalg.norm(mean) > 1e-6:
            spread = float(np.sqrt(((d - mean) ** 2).sum(1).mean()) / np.linalg.norm(mean))

    def heads(a: int) -> bool:
        if sum(c is not None for c in cents[a:]) < 2:
            return False
        min_motion = size / 16 * (n - 1 - a) / (n - 1)  # analyze_video's threshold, scaled to the span
        return direction_of(*_track(cents[a:], torus), min_motion) == direction

    return {"identity": bool(identity), "spread": spread, "constant": spread <= max_spread,
            "direction_all": heads(0), "direction_late": heads(n // 2),
            "single": all(count_objects(m, wrap=wrap) == 1 for m in masks)}


def score_long(videos: list[np.ndarray], prompts: list[str], **kwargs: float | bool) -> dict:
    """Shares of clips passing each :func:`long_range` check (``identity``, ``constant``,
    ``direction_all``, ``direction_late``, ``single``) and the median ``spread`` (``wrap=True``: wrapped clips)."""
    rows = [long_range(v, parse_prompt(p)["direction"], **kwargs) for v, p in zip(videos, prompts, strict=True)]
    keys = ("identity", "constant", "direction_all", "direction_late", "single")
    out = {k: sum(r[k] for r in rows) / max(1, len(rows)) for k in keys}
    out["spread"] = float(np.median([r["spread"] for r in rows])) if rows else float("nan")
    return out


def seam_ratio(frames: np.ndarray) -> float:
    """Loop seam error of one ``(F, H, W, 3)`` clip: mean ``|last - first frame|`` over the mean ``|frame t+1 -
    frame t|`` (1: the jump back to the start looks like one more step; 0: identical ends; ``inf`` for a
    still clip with different ends)."""
    f = np.asarray(frames, dtype=np.float64)
    if len(f) < 2:
        raise UsageError("a loop seam needs at least 2 frames")
    seam, steps = float(np.abs(f[-1] - f[0]).mean()), float(np.abs(np.diff(f, axis=0)).mean())
    return seam / steps if steps > 0 else (0.0 if seam == 0 else float("inf"))
