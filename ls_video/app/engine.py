"""The app's model side, without Gradio: one model loaded once, one request -> mp4 + gif + its command.

:class:`Engine` holds the loaded parts; each request gets its own light pipeline over the shared parts
(its own scheduler: a scheduler keeps per-run state, so two requests at once must not share one; the
shift's frame count is per thread, :mod:`ls_video.frame_state`). Request mistakes raise ``UsageError``
with a one-line message, which the UI shows as ``gr.Error``.
"""

from __future__ import annotations

import os
import random
import shlex
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from ls_video.errors import UsageError

MAX_SEED = 2**31 - 1
StepHook = Callable[[int, int], None]  # (steps done, steps in all)


@dataclass
class Settings:
    """One request: everything that decides the video (and the equivalent ``ls-video sample`` flags)."""

    prompt: str
    negative_prompt: str = ""
    num_frames: int = 16
    height: int = 32
    width: int = 32
    num_inference_steps: int = 25
    guidance_scale: float = 4.0
    seed: int | None = 0  # None: a random seed, drawn per request (the result says which)
    scheduler: str = "ddim"
    fps: float = 8.0
    mode: str = "text"  # a key of ls_video.app.modes.MODES
    mode_args: dict[str, Any] = field(default_factory=dict)  # the mode's own inputs


@dataclass
class Limits:
    """What one request may ask of this server (``ls-video app --max-frames`` ...)."""

    max_frames: int = 64
    max_size: int = 1024  # pixels, either side
    max_steps: int = 150


@dataclass
class Result:
    """The files of one request and the settings that remake it."""

    mp4: str
    gif: str
    seed: int
    command: str
    settings: dict[str, Any]
    seconds: float


def sample_command(model: str, s: Settings, seed: int, extra_flags: Iterable[str] = ()) -> str:
    """The ``ls-video sample`` command line that writes the same video as request ``s`` with ``seed``."""
    flags = ["ls-video", "sample", "--model", model, "--prompt", s.prompt]
    if s.negative_prompt:
        flags += ["--negative-prompt", s.negative_prompt]
    flags += ["--num-frames", str(s.num_frames), "--height", str(s.height), "--width", str(s.width),
              "--num-inference-steps", str(s.num_inference_steps), "--guidance-scale", f"{s.guidance_scale:g}",
              "--scheduler", s.scheduler, "--seed", str(seed), "--fps", f"{s.fps:g}", *extra_flags,
              "--out", "samples"]
    return " ".join(shlex.quote(f) for f in flags)


class _RequestPipeline:
    """Mixin for a per-request pipeline: the denoising loop reports each step to ``on_step``
    instead of drawing a tqdm bar (``DiffusionPipeline.progress_bar`` is the pipeline's progress hook)."""

    on_step: StepHook | None = None

    def progress_bar(self, iterable: Iterable | None = None, total: int | None = None) -> Iterator:
        items = list(iterable if iterable is not None else range(total or 0))
        for i, item in enumerate(items):
            yield item
            if self.on_step is not None:
                self.on_step(i + 1, len(items))


class Engine:
    """The model of one app, loaded once; :meth:`generate` serves requests (thread-safe)."""

    def __init__(self, model: str, device: str = "auto", dtype: str = "float32", out: str | None = None,
                 limits: Limits | None = None, ema: bool | None = None) -> None:
        import torch

        from ls_video.checkpoint import load_pipeline
        from ls_video.pipeline import LatentShiftPipeline
        from ls_video.schedulers import SCHEDULERS

        self.model = str(model)
        self.device = device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.limits = limits or Limits()
        self.out = out or tempfile.mkdtemp(prefix="ls-video-app-")
        os.makedirs(self.out, exist_ok=True)
        pipe = load_pipeline(self.model, ema=ema)
        pipe.to(self.device)
        if dtype != "float32":
            pipe.to(dtype=getattr(torch, dtype))
        self.pipe = pipe
        self.scheduler_config = pipe.scheduler.config
        self.schedulers = sorted(SCHEDULERS)
        self.native = pipe.unet.config.sample_size * pipe.vae_scale_factor
        self.stride = pipe.vae_scale_factor * 2 ** getattr(pipe.unet, "num_upsamplers",
                                                           len(pipe.unet.config.block_out_channels) - 1)
        self._cls = type("RequestPipeline", (_RequestPipeline, LatentShiftPipeline), {})
        self._lock = threading.Lock()  # file names and the counter below
        self.served = 0

    def check(self, s: Settings) -> None:
        """Raise ``UsageError`` (one line) for a request this server will not run."""
        lim = self.limits
        if not s.prompt or not s.prompt.strip():
            raise UsageError("the prompt is empty: describe the video to make")
        if not 1 <= s.num_frames <= lim.max_frames:
            raise UsageError(f"frames must be 1..{lim.max_frames} on this server (ls-video app --max-frames), "
                             f"got {s.num_frames}")
        for name, v in (("height", s.height), ("width", s.width)):
            if v < self.stride or v > lim.max_size or v % self.stride:
                raise UsageError(f"{name} must be a multiple of {self.stride} (what the VAE and U-Net of this model "
                                 f"take) between {self.stride} and {lim.max_size}, got {v}")
        if not 1 <= s.num_inference_steps <= lim.max_steps:
            raise UsageError(f"steps must be 1..{lim.max_steps}, got {s.num_inference_steps}")
        if s.scheduler not in self.schedulers:
            raise UsageError(f"unknown scheduler {s.scheduler!r}; choose from {self.schedulers}")
        if s.seed is not None and not 0 <= s.seed <= MAX_SEED:
            raise UsageError(f"seed must be 0..{MAX_SEED}, got {s.seed}")
        if not s.fps > 0:
            raise UsageError(f"fps must be > 0, got {s.fps}")
        from ls_video.app.modes import MODES

        if s.mode not in MODES:
            raise UsageError(f"unknown mode {s.mode!r}; choose from {sorted(MODES)}")

    def pipeline(self, scheduler: str, on_step: StepHook | None = None):
        """A pipeline for one request: the shared (loaded once) modules, a scheduler of its own."""
        from ls_video.schedulers import make_scheduler

        p = self.pipe
        req = self._cls(vae=p.vae, text_encoder=p.text_encoder, tokenizer=p.tokenizer, unet=p.unet,
                        scheduler=make_scheduler(scheduler, self.scheduler_config))
        req.on_step = on_step
        return req

    def generate(self, s: Settings, on_step: StepHook | None = None) -> Result:
        """Run request ``s``: writes ``.mp4`` and ``.gif`` under ``self.out``; ``UsageError`` for a bad request
        or one that runs out of memory (the server goes on)."""
        import torch

        from ls_video.app.modes import MODES
        from ls_video.conditioning import parse_travel
        from ls_video.video_io import write_video

        self.check(s)
        seed = random.randint(0, MAX_SEED) if s.seed is None else int(s.seed)
        mode = MODES[s.mode]
        call_kwargs, extra_flags = mode.apply(s)
        start = time.perf_counter()
        pipe = self.pipeline(s.scheduler, on_step)
        generator = [torch.Generator(self.device).manual_seed(seed)]  # as ls-video sample: one per video
        try:
            video = pipe(parse_travel(s.prompt), num_frames=s.num_frames, height=s.height, width=s.width,
                         num_inference_steps=s.num_inference_steps, guidance_scale=s.guidance_scale,
                         negative_prompt=parse_travel(s.negative_prompt) if s.negative_prompt else None,
                         generator=generator, **call_kwargs).frames[0]
        except (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), MemoryError) as err:
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
            raise UsageError(f"out of memory for {s.num_frames} frames at {s.height}x{s.width}: ask for fewer "
                             f"frames or a smaller size ({type(err).__name__})") from None
        with self._lock:
            self.served += 1
            stem = os.path.join(self.out, f"{self.served:04d}_{uuid.uuid4().hex[:8]}_s{seed}")
        write_video(stem + ".mp4", video, fps=s.fps)
        write_video(stem + ".gif", video, fps=s.fps)
        settings = {**asdict(s), "seed": seed, "model": self.model}
        if not settings["mode_args"]:
            settings.pop("mode_args")
        return Result(mp4=stem + ".mp4", gif=stem + ".gif", seed=seed,
                      command=sample_command(self.model, s, seed, extra_flags), settings=settings,
                      seconds=time.perf_counter() - start)
