"""``LatentShiftPipeline``: prompt -> video frames with a shift-augmented SD U-Net.

Thin orchestration in the diffusers style: encode prompts once, denoise ``(B, F, C, h, w)``
latents with any diffusers scheduler and classifier-free guidance, decode frames through the VAE
in chunks. ``num_frames=1`` gives images.
"""

from __future__ import annotations

import functools
import inspect
import os
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import AutoencoderKL, ControlNetModel, DiffusionPipeline, UNet2DConditionModel
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from einops import rearrange
from PIL import Image
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ls_video.compile import compile_whole
from ls_video.conditioning import FrameInputs, encode_travel, is_travel
from ls_video.controlnet import frame_control
from ls_video.errors import UsageError
from ls_video.long_video import FreeNoiseMixin, reschedule_noise, windowed_forward
from ls_video.text import encode_prompts
from ls_video.unet import TemporalConfig, get_temporal_config
from ls_video.vae_space import LatentScale
from ls_video.video_unet import load_video_unet


@dataclass
class LatentShiftPipelineOutput(BaseOutput):
    """``frames``: ``np`` -> ``(B, F, H, W, 3)`` floats in [0, 1]; ``pt`` -> ``(B, F, 3, H, W)``;
    ``pil`` -> a list (per video) of lists of ``PIL.Image``."""

    frames: np.ndarray | torch.Tensor | list


class LatentShiftPipeline(DiffusionPipeline, FreeNoiseMixin):
    """Text-to-video with a Latent-Shift U-Net.

    Components are those of Stable Diffusion (``vae``, ``text_encoder``, ``tokenizer``, ``unet``,
    ``scheduler``), so ``from_pretrained`` takes a plain SD folder (the shift is then added to its
    U-Net with default settings) or a folder exported by this project (``unet/latent_shift.json``).

    The pipeline never changes the parts it is given: a U-Net without temporal mixing (see
    :func:`ls_video.unet.apply_temporal_mixing`) samples its frames independently.

    ``compile=True`` compiles the whole U-Net on the first call (:func:`ls_video.compile.compile_whole`),
    with CUDA graphs on a GPU (``mode="reduce-overhead"``): each denoising step is then one graph
    replay instead of hundreds of kernel launches. The first call with a new shape (prompts x videos,
    frames, size) pays the compilation (about a minute at SD-1.5 size); later calls are fast.

    Long clips: any ``num_frames`` in one pass, or in overlapping windows after
    ``enable_free_noise(context_length, context_stride, weighting_scheme, noise_type)`` (diffusers' names;
    :mod:`ls_video.long_video`); ``loop=True`` samples a seamless loop (a circular shift).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["controlnet"]  # a ControlNetModel for conditioning_frames (ls_video/controlnet.py)

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        unet: UNet2DConditionModel,
        scheduler,
        compile: bool = False,
        controlnet: ControlNetModel | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              scheduler=scheduler)
        self.register_modules(controlnet=controlnet)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self._compile_unet = compile
        self._unet_compiled = False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike,
                        temporal: TemporalConfig | None = None, **kwargs):
        """Load like any diffusers pipeline, then make its own U-Net a video U-Net
        (:func:`ls_video.video_unet.load_video_unet`): the mixing ``temporal``, by default the one in
        ``unet/latent_shift.json``, else the shift (a plain SD folder). A Hub id is resolved first
        (:func:`ls_video.hub.resolve`, with ``revision`` / ``variant``), so ``latent_shift.json`` and the added
        layers are read from the snapshot folder diffusers loads."""
        from ls_video.hub import resolve, split_download_kwargs

        local = resolve(pretrained_model_name_or_path, variant=kwargs.get("variant"), what="model",
                        **split_download_kwargs(kwargs))
        if os.path.isdir(local) and not os.path.isfile(os.path.join(local, "model_index.json")):
            raise FileNotFoundError(f"{pretrained_model_name_or_path} has no model_index.json (not a diffusers "
                                    "pipeline folder)")
        pipe = super().from_pretrained(local, **kwargs)
        load_video_unet(pipe.unet, temporal, folder=os.path.join(local, "unet"))
        return pipe

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Save as a diffusers folder plus the shift settings in ``unet/latent_shift.json``."""
        if self.controlnet is not None:  # (set by assignment, diffusers' config still says (None, None))
            self.register_modules(controlnet=self.controlnet)
        super().save_pretrained(save_directory, **kwargs)
        (get_temporal_config(self.unet) or TemporalConfig("none")).save(os.path.join(save_directory, "unet"))

    def compile_unet(self) -> None:
        """Compile the U-Net on the next call (see the class docstring); the same as ``compile=True``."""
        self._compile_unet = True

    def _maybe_compile(self, device: torch.device) -> bool:
        """Compile the U-Net once if asked; ``True`` when it runs as CUDA graphs."""
        if self._compile_unet and not self._unet_compiled:
            compile_whole(self.unet, mode="reduce-overhead" if device.type == "cuda" else None)
            self._unet_compiled = True
        return self._unet_compiled and device.type == "cuda"

    def _extra_step_kwargs(self, generator, eta: float) -> dict:
        params = set(inspect.signature(self.scheduler.step).parameters)
        extra = {}
        if "eta" in params:
            extra["eta"] = eta
        if "generator" in params:
            extra["generator"] = generator
        return extra

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, chunk_size: int = 8) -> torch.Tensor:
        """``(B, F, C, h, w)`` scaled latents -> ``(B, F, 3, H, W)`` frames in [0, 1], ``chunk_size``
        frames through the VAE at a time."""
        b = latents.shape[0]
        flat = LatentScale.of(self.vae.config).to_vae(rearrange(latents, "b f c h w -> (b f) c h w"))
        flat = flat.to(self.vae.dtype)
        frames = [self.vae.decode(chunk).sample.float() for chunk in flat.split(chunk_size)]
        video = (torch.cat(frames) / 2 + 0.5).clamp(0, 1)
        return rearrange(video, "(b f) c h w -> b f c h w", b=b)

    def check_inputs(self, height: int, width: int, num_frames: int, num_inference_steps: int) -> None:
        unet_stride = 2 ** getattr(self.unet, "num_upsamplers", len(self.unet.config.block_out_channels) - 1)
        stride = self.vae_scale_factor * unet_stride  # pixels per latent pixel of the U-Net's lowest resolution
        if height % stride or width % stride:
            raise UsageError(f"height and width must be divisible by {stride} (the VAE's downsampling x"
                             f"{self.vae_scale_factor} times the U-Net's x{unet_stride}), got {height}x{width}")
        if height <= 0 or width <= 0:
            raise UsageError(f"height and width must be positive, got {height}x{width}")
        if num_frames < 1:
            raise UsageError(f"num_frames must be >= 1, got {num_frames}")
        if num_inference_steps < 1:
            raise UsageError(f"num_inference_steps must be >= 1, got {num_inference_steps}")

    def encode_prompt(self, prompts: list[str], negative_prompt: str | list[str] | None, num_videos_per_prompt: int,
                      do_cfg: bool) -> torch.Tensor:
        """``(B, L, D)`` embeddings, each distinct prompt encoded once; with CFG the negatives come first."""
        unique = list(dict.fromkeys(prompts))
        table = encode_prompts(unique, self.tokenizer, self.text_encoder)
        embeds = table[[unique.index(p) for p in prompts]].repeat_interleave(num_videos_per_prompt, 0)
        if do_cfg:
            negatives = negative_prompt if negative_prompt is not None else ""
            negatives = [negatives] * len(prompts) if isinstance(negatives, str) else list(negatives)
            if len(negatives) != len(prompts):
                raise UsageError("negative_prompt must be one string or one per prompt")
            neg = encode_prompts(negatives, self.tokenizer, self.text_encoder)
            embeds = torch.cat([neg.repeat_interleave(num_videos_per_prompt, 0), embeds])
        return embeds.to(self.unet.device, self.unet.dtype)  # (a text encoder may sit on another device)

    def denoise(self, latents: torch.Tensor, embeds: torch.Tensor, guidance_scale: float, extra: dict,
                timesteps: torch.Tensor | None = None, step_end=None, unet_forward=None,
                loop: bool = False) -> torch.Tensor:
        """The scheduler's loop over its timesteps (set beforehand; ``timesteps``: only those), with classifier-free
        guidance. ``embeds``: ``(B, L, D)``, or ``(B, F, L, D)`` per frame; ``step_end(i, t, latents)`` returns the
        latents after step ``i`` (image-to-video holds its frames there); ``unet_forward``: the U-Net call (default:
        :func:`ls_video.long_video.windowed_forward`, in windows after ``enable_free_noise``, circular with ``loop``;
        or a ControlNet's ``FrameControl``)."""
        forward = unet_forward or functools.partial(windowed_forward, context=self._free_noise, loop=loop)
        do_cfg = guidance_scale > 1.0
        graphed = self._maybe_compile(latents.device)
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps if timesteps is None else timesteps)):
            model_in = torch.cat([latents] * 2) if do_cfg else latents
            model_in = self.scheduler.scale_model_input(model_in, t)
            if graphed:  # the graph's output buffer is reused by the next replay: keep a copy
                torch.compiler.cudagraph_mark_step_begin()
                pred = forward(self.unet, model_in, t, embeds).clone()
            else:
                pred = forward(self.unet, model_in, t, embeds)
            if do_cfg:
                uncond, cond = pred.chunk(2)
                pred = uncond + guidance_scale * (cond - uncond)
            latents = self.scheduler.step(pred, t, latents, **extra, return_dict=False)[0]
            if step_end is not None:
                latents = step_end(i, t, latents)
        return latents

    def postprocess(self, latents: torch.Tensor, output_type: str, decode_chunk_size: int):
        """Decoded frames as ``np``, ``pt`` or ``pil`` (see :class:`LatentShiftPipelineOutput`)."""
        if output_type not in ("np", "pt", "pil"):
            raise UsageError(f"output_type must be 'np', 'pt', 'pil' or 'latent', got {output_type!r}")
        frames = self.decode_latents(latents, decode_chunk_size)
        if output_type == "pt":
            return frames
        arrays = frames.permute(0, 1, 3, 4, 2).cpu().numpy()
        if output_type == "np":
            return arrays
        return [[Image.fromarray(f) for f in video] for video in (arrays * 255).round().astype(np.uint8)]

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | dict[int, str] | list[dict[int, str]],
        num_frames: int = 16,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_videos_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "np",
        decode_chunk_size: int = 8,
        return_dict: bool = True,
        controlnet: ControlNetModel | None = None,
        conditioning_frames=None,
        controlnet_conditioning_scale: float = 1.0,
        guess_mode: bool = False,
        control_guidance_start: float = 0.0,
        control_guidance_end: float = 1.0,
        prompt_interpolation: str = "linear",
        video: list[Image.Image] | np.ndarray | torch.Tensor | None = None,
        strength: float = 0.8,
        image: Image.Image | np.ndarray | torch.Tensor | None = None,
        last_image: Image.Image | np.ndarray | torch.Tensor | None = None,
        loop: bool = False,
    ) -> LatentShiftPipelineOutput | tuple:
        """Generate ``len(prompt) * num_videos_per_prompt`` videos of ``num_frames`` frames.

        Args:
            prompt: one prompt or a list; a prompt may be a ``{frame: prompt}`` dict (prompt travel,
                :mod:`ls_video.conditioning`), as may ``negative_prompt``.
            num_frames: frames per video (1 gives images; with ``video``: its length).
            height, width: output size in pixels (default: the size of ``video`` / ``image``, else the U-Net's
                ``sample_size`` x VAE factor).
            num_inference_steps: denoising steps of the scheduler.
            guidance_scale: classifier-free guidance weight (<= 1 disables guidance).
            negative_prompt: prompt(s) to guide away from (default: the empty prompt).
            generator: seeds the initial noise (a list gives one generator per video).
            latents: optional initial noise ``(B, F, C, h, w)``.
            output_type: ``"np"``, ``"pt"``, ``"pil"`` or ``"latent"``.
            decode_chunk_size: frames decoded by the VAE at once (memory bound for long videos).
            controlnet: a ``ControlNetModel`` for this call (default: the pipeline's ``controlnet`` component).
            conditioning_frames: one condition image per frame (``num_frames`` PIL images, an ``(F, H, W, 3)``
                array, an ``(F, 3, H, W)`` tensor in [0, 1], or one such video per generated video), each steering
                its own frame (:mod:`ls_video.controlnet`).
            controlnet_conditioning_scale: weight of the ControlNet's residuals (0: no ControlNet).
            guess_mode: with guidance, the ControlNet sees only the prompted half (as diffusers).
            control_guidance_start, control_guidance_end: the fraction of the steps the ControlNet acts in.
            prompt_interpolation: per-frame embeddings between travel keys, ``"linear"`` or ``"hold"``.
            video: input frames for video-to-video (PIL list, ``(F, H, W, 3)`` array, ``(F, 3, H, W)`` tensor).
            strength: how much of ``video`` is redone (0: the video through the VAE; 1: text-to-video).
            image, last_image: first / last frame held during denoising (image-to-video, keyframes).
            loop: a seamless loop: the shift is circular (the last frame is the first one's previous neighbour).
        """
        prompts = [prompt] if isinstance(prompt, str | dict) else list(prompt)
        given = FrameInputs.of(video=video, strength=strength, image=image, last_image=last_image)
        num_frames, height, width = given.size(num_frames, height, width)
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        self.check_inputs(height, width, num_frames, num_inference_steps)
        device = self._execution_device
        do_cfg = guidance_scale > 1.0
        if is_travel(prompts) or is_travel(negative_prompt):
            embeds = encode_travel(self, prompts, negative_prompt, num_frames, num_videos_per_prompt, do_cfg,
                                   prompt_interpolation)
        else:
            embeds = self.encode_prompt(prompts, negative_prompt if do_cfg else None, num_videos_per_prompt, do_cfg)
        shape = (embeds.shape[0] // (2 if do_cfg else 1), num_frames, self.unet.config.in_channels,
                 height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
            latents = reschedule_noise(latents, self._free_noise, generator)  # (FreeNoise, when enabled)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        control = frame_control(self, controlnet, conditioning_frames, shape[0], num_frames, height, width, do_cfg,
                                controlnet_conditioning_scale, guess_mode, control_guidance_start,
                                control_guidance_end)
        if control is not None and (loop or self._free_noise is not None):
            raise UsageError("a ControlNet samples the whole clip in one pass: not with loop or frame windows yet")
        start, timesteps, step_end = given.start(self, latents.to(device), num_inference_steps, decode_chunk_size)
        latents = self.denoise(start, embeds, guidance_scale, self._extra_step_kwargs(generator, eta), timesteps,
                               step_end, unet_forward=control, loop=loop)
        frames = latents if output_type == "latent" else self.postprocess(latents, output_type, decode_chunk_size)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return LatentShiftPipelineOutput(frames=frames)
