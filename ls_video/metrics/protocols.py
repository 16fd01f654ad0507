"""The published zero-shot protocols: which prompts, how many samples, which real clips.

* **fvd2048_16f** (StyleGAN-V ``metric_main.py``): 2048 generated and 2048 real clips of 16 frames, I3D
  features, Fréchet distance in float64. The frame stride of the real clips (StyleGAN-V: 1, consecutive
  frames; DynamiCrafter's UCF-101 numbers: 3) is recorded with every number; other counts get their own name
  (``fvd{N}_{F}f``, ``_stride{S}`` when not 1).
* **UCF-101** zero-shot: one prompt per class (the class name in words, ``ApplyEyeMakeup`` ->
  ``apply eye makeup``, or the user's prompt per class), samples drawn with the dataset's class distribution
  (:func:`allocate`: proportional, largest remainder), real clips drawn from all videos.
* **MSR-VTT** zero-shot: one caption per test video (2990 in the official test split), CLIPSIM over the
  generated videos and their captions, CLIP-FID and FVD against the test videos.
"""

from __future__ import annotations

import csv
import json
import os
import re

import numpy as np

from ls_video.errors import UsageError

FVD2048_16F = dict(name="fvd2048_16f", num_generated=2048, num_real=2048, num_frames=16, frame_stride=1)
MSRVTT_TEST_VIDEOS = 2990
VIDEO_EXTENSIONS = (".avi", ".mp4", ".webm", ".mkv", ".mov", ".gif")


def fvd_name(num_generated: int, num_real: int, num_frames: int, frame_stride: int) -> str:
    """``fvd2048_16f`` for StyleGAN-V's protocol, ``fvd{N}_{F}f[_stride{S}]`` (``N``: the smaller count) else."""
    name = f"fvd{min(num_generated, num_real)}_{num_frames}f"
    return name + (f"_stride{frame_stride}" if frame_stride != 1 else "")


# --- UCF-101 ------------------------------------------------------------------------------------------------


def class_prompt(name: str) -> str:
    """``ApplyEyeMakeup`` -> ``apply eye makeup``, ``YoYo`` -> ``yo yo``, ``Skiing`` -> ``skiing``."""
    words = re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", name.replace("_", " "))
    return " ".join(w.lower() for w in words) or name


def ucf101_videos(root: str) -> dict[str, list[str]]:
    """Class -> sorted video files of a UCF-101 folder (``ROOT/CLASS/v_CLASS_gXX_cYY.avi``)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"UCF-101 folder {root} not found")
    classes = {}
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        if os.path.isdir(folder):
            files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(VIDEO_EXTENSIONS))
            if files:
                classes[name] = files
    if not classes:
        raise UsageError(f"{root} holds no class folders with videos (expected ROOT/CLASS/*.avi as UCF-101 unpacks)")
    return classes


def allocate(counts: dict[str, int], total: int) -> dict[str, int]:
    """``total`` samples over classes in proportion to ``counts`` (largest remainder, ties by name): the
    allocation sums to ``total`` and no class is more than one sample from its exact share."""
    n = sum(counts.values())
    if n <= 0 or total < 0:
        raise UsageError("need classes with videos and a non-negative sample count")
    exact = {c: total * k / n for c, k in counts.items()}
    out = {c: int(np.floor(v)) for c, v in exact.items()}
    for c in sorted(counts, key=lambda c: (-(exact[c] - out[c]), c))[:total - sum(out.values())]:
        out[c] += 1
    return out


def load_class_prompts(path: str | None, classes: list[str]) -> dict[str, str]:
    """Class -> prompt: the class name in words, or a JSON ``{CLASS: PROMPT}`` file covering every class."""
    prompts = {c: class_prompt(c) for c in classes}
    if path:
        with open(path) as f:
            given = json.load(f)
        if not isinstance(given, dict):
            raise UsageError(f"{path}: expected a JSON object {{CLASS: PROMPT}}")
        missing = sorted(set(classes) - set(given))
        if missing:
            raise UsageError(f"{path} has no prompt for {len(missing)} classes, e.g. {missing[:3]}")
        prompts = {c: str(given[c]) for c in classes}
    return prompts


def ucf101_plan(root: str, num_samples: int, seed: int, prompts_file: str | None = None) -> tuple[list[dict], dict]:
    """Generation rows ``{index, prompt, seed, class}`` (class by class, seed + index) and the class counts."""
    videos = ucf101_videos(root)
    share = allocate({c: len(v) for c, v in videos.items()}, num_samples)
    prompts = load_class_prompts(prompts_file, list(videos))
    rows = [dict(cls=c, prompt=prompts[c]) for c in videos for _ in range(share[c])]
    rows = [dict(index=i, seed=seed + i, **r) for i, r in enumerate(rows)]
    return rows, dict(videos_per_class={c: len(v) for c, v in videos.items()}, samples_per_class=share)


# --- MSR-VTT ------------------------------------------------------------------------------------------------


def _caption_rows(path: str) -> tuple[list[dict], list[str] | None]:
    """``[{video_id, caption}]`` and the split's video ids when the file says (official JSON)."""
    if path.lower().endswith(".csv"):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        return [dict(video_id=r["video_id"], caption=r.get("caption") or r["sentence"]) for r in rows], None
    with open(path) as f:
        data = [json.loads(line) for line in f if line.strip()] if path.lower().endswith(".jsonl") else json.load(f)
    if isinstance(data, dict) and "sentences" in data:  # the official test_videodatainfo.json / MSRVTT_data.json
        return [dict(video_id=s["video_id"], caption=s["caption"]) for s in data["sentences"]], \
            [(v["video_id"], v.get("split", "test")) for v in data.get("videos", [])]
    if isinstance(data, list):
        return [dict(video_id=r["video_id"], caption=r.get("caption") or r["sentence"]) for r in data], None
    raise UsageError(f"{path}: expected MSR-VTT's JSON (videos + sentences), or rows with video_id and caption")


def msrvtt_captions(path: str, split: str = "test", choice: str = "random", seed: int = 0) -> list[dict]:
    """One caption per video of ``split``, videos in id order: ``[{video_id, caption}]``. ``choice`` is
    ``first`` (the file's first caption of each video) or ``random`` (seeded)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"annotations {path} not found")
    rows, videos = _caption_rows(path)
    captions: dict[str, list[str]] = {}
    for r in rows:
        captions.setdefault(str(r["video_id"]), []).append(str(r["caption"]).strip())
    keep = [v for v, s in videos if s == split] if videos else list(captions)
    if not keep:
        raise UsageError(f"{path} has no videos in split {split!r}")

    def number(video_id: str) -> tuple:
        return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", video_id))

    rng = np.random.default_rng(seed)
    out = []
    for vid in sorted(keep, key=number):
        if vid not in captions:
            raise UsageError(f"{path}: video {vid} has no caption")
        options = captions[vid]
        out.append(dict(video_id=vid, caption=options[0] if choice == "first" else options[rng.integers(len(options))]))
    return out


def find_video(folder: str, video_id: str) -> str:
    for ext in VIDEO_EXTENSIONS:
        path = os.path.join(folder, video_id + ext)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"no video {video_id}.mp4 (or .avi, .webm, ...) in {folder}")


# --- real clips ---------------------------------------------------------------------------------------------


def clip_start(length: int, num_frames: int, stride: int, rng: np.random.Generator) -> int | None:
    """A random first frame for ``num_frames`` frames ``stride`` apart, ``None`` if the video is too short."""
    span = (num_frames - 1) * stride + 1
    return None if length < span else int(rng.integers(length - span + 1))


def resize_clip(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre-crop to ``height:width`` and resize (area-averaging down, bilinear up): uint8 ``(F, H, W, 3)``."""
    import torch
    import torch.nn.functional as F

    f, h, w, _ = frames.shape
    if (h, w) == (height, width):
        return frames
    scale = max(height / h, width / w)
    ch, cw = min(h, round(height / scale)), min(w, round(width / scale))
    top, left = (h - ch) // 2, (w - cw) // 2
    x = torch.from_numpy(np.ascontiguousarray(frames[:, top:top + ch, left:left + cw])).permute(0, 3, 1, 2).float()
    mode = "area" if ch >= height and cw >= width else "bilinear"
    x = F.interpolate(x, size=(height, width), mode=mode, **({} if mode == "area" else {"align_corners": False}))
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def real_clips(paths: list[str], count: int, num_frames: int, stride: int, height: int, width: int,
               seed: int) -> list[dict]:
    """``count`` clip specs ``{path, start}`` drawn (seeded) from ``paths``; too short videos are skipped."""
    from ls_video.video_io import read_video

    rng = np.random.default_rng(seed)
    order = list(rng.permutation(len(paths)))
    order = (order * (count // max(1, len(order)) + 2))[:count + len(paths)]  # with replacement when too few
    specs, lengths = [], {}
    for i in order:
        if len(specs) == count:
            break
        path = paths[int(i)]
        if path not in lengths:
            lengths[path] = len(read_video(path)[0])
        start = clip_start(lengths[path], num_frames, stride, rng)
        if start is not None:
            specs.append(dict(path=path, start=start))
    if len(specs) < min(count, 2):
        raise UsageError(f"fewer than 2 real videos have {(num_frames - 1) * stride + 1} frames "
                         f"({num_frames} frames, stride {stride})")
    return specs


def load_clip(spec: dict, num_frames: int, stride: int, height: int, width: int) -> np.ndarray:
    from ls_video.video_io import read_video

    frames = read_video(spec["path"])[0]
    return resize_clip(frames[spec["start"]:spec["start"] + (num_frames - 1) * stride + 1:stride], height, width)
