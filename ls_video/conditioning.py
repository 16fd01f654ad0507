"""Generation from more than one prompt: prompt travel, video-to-video and image-to-video.

Every frame is its own batch row of the U-Net, so each of these is a change of the inputs of the
ordinary denoising loop (:meth:`ls_video.pipeline.LatentShiftPipeline.denoise`), not of the model:

- **prompt travel**: ``prompt={frame: prompt}`` gives each frame its own text embedding, linear
  between key frames (as diffusers' FreeNoise) or held from one key to the next;
- **video-to-video** (SDEdit): the input video's latents, noised to the timestep of ``strength``,
  denoised for the remaining ``round(num_inference_steps * strength)`` steps;
- **image-to-video / keyframes**: a first (``image``) and last (``last_image``) frame held
  training-free: after every step their latents are replaced with the image latents noised to the
  next timestep (as inpainting and RePaint do), and with the clean image latents after the last.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf
from PIL import Image

from ls_video.errors import UsageError
from ls_video.text import encode_prompts
from ls_video.vae_space import LatentScale

INTERPOLATIONS = ("linear", "hold")
TRAVEL_PART = re.compile(r"\s*(\d+)\s*:(.*)", re.DOTALL)

# ----------------------------------------------------------------------------------------------- prompt travel


def parse_travel(text: str) -> str | dict[int, str]:
    """The CLI syntax ``"0:a red square moving left|8:a red square moving right"`` -> ``{0: ..., 8: ...}``.

    A text with no ``FRAME:`` part is a plain prompt, returned as it is."""
    parts = text.split("|")
    matches = [TRAVEL_PART.fullmatch(part) for part in parts]
    if not any(matches):
        return text
    bad = [part for part, m in zip(parts, matches, strict=True) if m is None]
    if bad:
        raise UsageError(f"prompt travel part {bad[0]!r} is not FRAME:PROMPT (in {text!r})")
    schedule = {int(m.group(1)): m.group(2).strip() for m in matches}
    if len(schedule) != len(parts):
        raise UsageError(f"a frame is given twice in the prompt travel {text!r}")
    return schedule


def is_travel(prompt: Any) -> bool:
    """Whether ``prompt`` (or one prompt of a list) is a ``{frame: prompt}`` dict."""
    return isinstance(prompt, dict) or (isinstance(prompt, list | tuple) and any(isinstance(p, dict) for p in prompt))


def check_schedule(prompt: str | dict[int, str], num_frames: int) -> dict[int, str]:
    """A prompt as a sorted ``{frame: prompt}`` schedule (a string is ``{0: prompt}``), keys checked."""
    schedule = {0: prompt} if isinstance(prompt, str) else prompt
    if not isinstance(schedule, dict) or not schedule:
        raise UsageError(f"a prompt must be a string or a non-empty {{frame: prompt}} dict, got {prompt!r}")
    for key, value in schedule.items():
        if isinstance(key, bool) or not isinstance(key, int | np.integer) or not 0 <= key < num_frames:
            raise UsageError(f"prompt travel frame {key!r} is not a frame index in [0, {num_frames - 1}]")
        if not isinstance(value, str):
            raise UsageError(f"prompt travel frame {key} has no string prompt: {value!r}")
    return {int(k): schedule[k] for k in sorted(schedule)}


def travel_embeddings(keys: Sequence[int], embeds: torch.Tensor, num_frames: int,
                      interpolation: str = "linear") -> torch.Tensor:
    """``(F, L, D)`` per-frame embeddings from ``embeds`` ``(K, L, D)`` at the sorted ``keys``.

    ``"linear"``: ``(1 - a) * E[k0] + a * E[k1]`` with ``a = (f - k0) / (k1 - k0)`` between two keys (diffusers'
    FreeNoise ``_lerp``); ``"hold"``: the last key at or before ``f``. Frames before the first key take the
    first key, frames after the last key the last key; a key frame gets its own embedding exactly."""
    if interpolation not in INTERPOLATIONS:
        raise UsageError(f"prompt_interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    rows = []
    for f in range(num_frames):
        before = max((i for i, k in enumerate(keys) if k <= f), default=0)
        after = min(before + 1, len(keys) - 1)
        if interpolation == "hold" or after == before or f <= keys[before]:
            rows.append(embeds[before])
        else:
            a = (f - keys[before]) / (keys[after] - keys[before])
            rows.append((1 - a) * embeds[before] + a * embeds[after])
    return torch.stack(rows)


def encode_travel(pipe, prompts: list, negative_prompt: Any, num_frames: int, num_videos_per_prompt: int,
                  do_cfg: bool, interpolation: str = "linear") -> torch.Tensor:
    """``(B, F, L, D)`` per-frame embeddings (with CFG the negatives first, as ``encode_prompt``): each prompt a
    string or a ``{frame: prompt}`` dict; ``negative_prompt`` one string / dict for all, or one per prompt."""
    schedules = [check_schedule(p, num_frames) for p in prompts]
    negatives: list = []
    if do_cfg:
        neg = "" if negative_prompt is None else negative_prompt
        negatives = [neg] * len(prompts) if isinstance(neg, str | dict) else list(neg)
        if len(negatives) != len(prompts):
            raise UsageError("negative_prompt must be one string or dict, or one per prompt")
        negatives = [check_schedule(n, num_frames) for n in negatives]
    texts = list(dict.fromkeys(t for s in schedules + negatives for t in s.values()))
    table = encode_prompts(texts, pipe.tokenizer, pipe.text_encoder)

    def per_frame(schedules: list[dict[int, str]]) -> torch.Tensor:
        videos = [travel_embeddings(list(s), table[[texts.index(t) for t in s.values()]], num_frames, interpolation)
                  for s in schedules]
        return torch.stack(videos).repeat_interleave(num_videos_per_prompt, 0)

    embeds = torch.cat([per_frame(negatives), per_frame(schedules)]) if do_cfg else per_frame(schedules)
    return embeds.to(pipe.unet.device, pipe.unet.dtype)


# --------------------------------------------------------------------------------- video-to-video, image-to-video


def to_frames(frames: Any, what: str, image: bool = False) -> torch.Tensor:
    """Frames as ``(F, 3, H, W)`` floats in [0, 1] (an image: ``F = 1``) from a list of ``PIL.Image``, an
    array ``(F, H, W, 3)`` (``(H, W, 3)`` for an image; uint8, or floats in [0, 1]) or a tensor
    ``(F, 3, H, W)`` (``(3, H, W)``) in [0, 1], the layout of ``output_type="pt"``."""
    if isinstance(frames, Image.Image):
        frames = [frames]
    if isinstance(frames, list | tuple) and frames and all(isinstance(f, Image.Image) for f in frames):
        frames = np.stack([np.asarray(f.convert("RGB")) for f in frames])
    if isinstance(frames, np.ndarray):
        arr = frames[None] if frames.ndim == 3 else frames
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise UsageError(f"{what} must be (F, H, W, 3) frames (or (H, W, 3) for an image), got {frames.shape}")
        out = torch.from_numpy(arr.astype(np.float32) / 255 if arr.dtype == np.uint8 else arr.astype(np.float32))
        out = out.permute(0, 3, 1, 2)
    elif isinstance(frames, torch.Tensor):
        out = (frames[None] if frames.ndim == 3 else frames).float()
        if out.ndim != 4 or out.shape[1] != 3:
            raise UsageError(f"{what} must be a (F, 3, H, W) tensor (or (3, H, W) for an image), "
                             f"got {tuple(frames.shape)}")
    else:
        raise UsageError(f"{what} must be PIL images, a numpy array or a tensor, got {type(frames).__name__}")
    if image and out.shape[0] != 1:
        raise UsageError(f"{what} must be one image, got {out.shape[0]} frames")
    if out.shape[0] < 1:
        raise UsageError(f"{what} has no frames")
    if out.min() < 0 or out.max() > 1:
        raise UsageError(f"{what} must be in [0, 1] (uint8 arrays and PIL images are scaled)")
    return out.contiguous()


@torch.no_grad()
def encode_frames(vae, frames: torch.Tensor, height: int, width: int, chunk_size: int = 8) -> torch.Tensor:
    """``(F, 3, H, W)`` frames in [0, 1] -> ``(F, C, h, w)`` latents in the model's space (the VAE's mean),
    resized to ``height`` x ``width`` first when their size differs."""
    frames = frames.to(vae.device, torch.float32)
    if frames.shape[-2:] != (height, width):
        frames = nnf.interpolate(frames, size=(height, width), mode="bilinear", antialias=True,
                                 align_corners=False).clamp(0, 1)
    pixels = (frames * 2 - 1).to(vae.dtype)
    raw = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in pixels.split(chunk_size)])
    return LatentScale.of(vae.config).to_model(raw)


def strength_steps(num_inference_steps: int, strength: float) -> int:
    """Denoising steps of video-to-video: ``num_inference_steps * strength`` rounded to the nearest (halves up).

    diffusers' ``get_timesteps`` truncates instead (``int(50 * 0.29) == 14``, here 15)."""
    return min(int(num_inference_steps * strength + 0.5), num_inference_steps)


def set_start(scheduler, num_inference_steps: int, steps: int) -> torch.Tensor:
    """The scheduler's last ``steps`` timesteps (of ``num_inference_steps`` set), with its begin index set so
    that ``step`` and ``add_noise`` of index-based schedulers (Euler, DPM-Solver) start there."""
    skip = (num_inference_steps - steps) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(skip)
    return scheduler.timesteps[skip:]


@dataclass
class FrameInputs:
    """What a call gives besides noise: an input ``video`` (SDEdit with ``strength``) and the frames to hold
    (``{index: (3, H, W)}`` in [0, 1]; ``-1`` is the last frame)."""

    video: torch.Tensor | None = None
    strength: float = 0.8
    held: dict[int, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def of(cls, video: Any = None, strength: float = 0.8, image: Any = None, last_image: Any = None) -> FrameInputs:
        if not 0.0 <= float(strength) <= 1.0:
            raise UsageError(f"strength must be in [0, 1], got {strength}")
        held = {}
        if image is not None:
            held[0] = to_frames(image, "image", image=True)[0]
        if last_image is not None:
            held[-1] = to_frames(last_image, "last_image", image=True)[0]
        return cls(None if video is None else to_frames(video, "video"), float(strength), held)

    def size(self, num_frames: int, height: int | None, width: int | None) -> tuple[int, int | None, int | None]:
        """``num_frames`` (the video's length when one is given) and the output size (default: the input's)."""
        given = self.video if self.video is not None else next(iter(self.held.values()), None)
        if self.video is not None:
            num_frames = self.video.shape[0]
        if len(self.held) == 2 and num_frames < 2:
            raise UsageError("image and last_image need num_frames >= 2")
        if given is not None:
            height, width = height or given.shape[-2], width or given.shape[-1]
        return num_frames, height, width

    def start(self, pipe, noise: torch.Tensor, num_inference_steps: int, decode_chunk_size: int = 8
              ) -> tuple[torch.Tensor, torch.Tensor | None, Callable | None]:
        """Initial latents, the timesteps to run (``None``: all) and the per-step hook of ``denoise``
        (``None``: none), for ``noise`` ``(B, F, C, h, w)``; the scheduler's timesteps are set."""
        scheduler = pipe.scheduler
        height, width = (s * pipe.vae_scale_factor for s in noise.shape[-2:])
        latents, timesteps = noise * scheduler.init_noise_sigma, None
        if self.video is not None:
            steps = strength_steps(num_inference_steps, self.strength)
            if steps < num_inference_steps:  # (strength 1: text-to-video from the same noise, the video unused)
                timesteps = set_start(scheduler, num_inference_steps, steps)
                video = encode_frames(pipe.vae, self.video, height, width, decode_chunk_size).to(noise)
                video = video.expand_as(noise)
                latents = scheduler.add_noise(video, noise, timesteps[:1]) if steps else video
        if not self.held:
            return latents, timesteps, None
        f = noise.shape[1]
        index = sorted({i % f for i in self.held})
        images = torch.stack([self.held[i] for i in sorted(self.held, key=lambda i: i % f)])
        known = encode_frames(pipe.vae, images, height, width, decode_chunk_size).to(noise)
        known = known.expand(noise.shape[0], *known.shape)
        order = scheduler.timesteps if timesteps is None else timesteps

        def hold(i: int, t, x: torch.Tensor) -> torch.Tensor:
            """After step ``i``: the held frames at the next timestep's noise level (clean after the last)."""
            x = x.clone()
            x[:, index] = scheduler.add_noise(known, noise[:, index], order[i + 1 : i + 2]) if i + 1 < len(order) \
                else known
            return x

        if len(order) == 0:
            return hold(-1, None, latents), timesteps, hold
        latents = latents.clone()
        latents[:, index] = scheduler.add_noise(known, noise[:, index], order[:1])
        return latents, timesteps, hold
