"""``LatentShiftPipeline``: prompt -> video frames with a shift-augmented SD U-Net.

Thin orchestration in the diffusers style: encode prompts once, denoise ``(B, F, C, h, w)``
latents with any diffusers scheduler and classifier-free guidance, decode frames through the VAE
in chunks. ``num_frames=1`` gives images.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from einops import rearrange
from PIL import Image
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ls_video.compile import compile_whole
from ls_video.errors import UsageError
from ls_video.long_video import FreeNoiseMixin, reschedule_noise, windowed_forward
from ls_video.text import encode_prompts
from ls_video.unet import TemporalConfig, get_temporal_config
from ls_video.vae_space import LatentScale


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

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        unet: UNet2DConditionModel,
        scheduler,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              scheduler=scheduler)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self._compile_unet = compile
        self._unet_compiled = False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike,
                        temporal: TemporalConfig | None = None, **kwargs):
        """Load like any diffusers pipeline, then make its own U-Net a video U-Net
        (:func:`ls_video.components.load_video_unet`): the mixing ``temporal``, by default the one in
        ``unet/latent_shift.json``, else the shift (a plain SD folder). A Hub id is resolved first
        (:func:`ls_video.hub.resolve`, with ``revision`` / ``variant``), so ``latent_shift.json`` and the added
        layers are read from the snapshot folder diffusers loads."""
        from ls_video.components import load_video_unet  # (components builds pipelines: imported on use)
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
                loop: bool = False) -> torch.Tensor:
        """The scheduler's loop over its timesteps (set beforehand), with classifier-free guidance; the U-Net in
        windows after ``enable_free_noise``, circular with ``loop`` (:func:`ls_video.long_video.windowed_forward`)."""
        do_cfg = guidance_scale > 1.0
        graphed = self._maybe_compile(latents.device)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_in = torch.cat([latents] * 2) if do_cfg else latents
            model_in = self.scheduler.scale_model_input(model_in, t)
            if graphed:  # the graph's output buffer is reused by the next replay: keep a copy
                torch.compiler.cudagraph_mark_step_begin()
                pred = windowed_forward(self.unet, model_in, t, embeds, self._free_noise, loop).clone()
            else:
                pred = windowed_forward(self.unet, model_in, t, embeds, self._free_noise, loop)
            if do_cfg:
                uncond, cond = pred.chunk(2)
                pred = uncond + guidance_scale * (cond - uncond)
            latents = self.scheduler.step(pred, t, latents, **extra, return_dict=False)[0]
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
        prompt: str | list[str],
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
        loop: bool = False,
    ) -> LatentShiftPipelineOutput | tuple:
        """Generate ``len(prompt) * num_videos_per_prompt`` videos of ``num_frames`` frames.

        Args:
            prompt: one prompt or a list.
            num_frames: frames per video (1 gives images).
            height, width: output size in pixels (default: the U-Net's ``sample_size`` x VAE factor).
            num_inference_steps: denoising steps of the scheduler.
            guidance_scale: classifier-free guidance weight (<= 1 disables guidance).
            negative_prompt: prompt(s) to guide away from (default: the empty prompt).
            generator: seeds the initial noise (a list gives one generator per video).
            latents: optional initial noise ``(B, F, C, h, w)``.
            output_type: ``"np"``, ``"pt"``, ``"pil"`` or ``"latent"``.
            decode_chunk_size: frames decoded by the VAE at once (memory bound for long videos).
            loop: a seamless loop: the shift is circular (the last frame is the first one's previous neighbour).
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        self.check_inputs(height, width, num_frames, num_inference_steps)
        device = self._execution_device
        do_cfg = guidance_scale > 1.0
        embeds = self.encode_prompt(prompts, negative_prompt if do_cfg else None, num_videos_per_prompt, do_cfg)
        shape = (embeds.shape[0] // (2 if do_cfg else 1), num_frames, self.unet.config.in_channels,
                 height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
            latents = reschedule_noise(latents, self._free_noise, generator)  # (FreeNoise, when enabled)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = self.denoise(latents.to(device) * self.scheduler.init_noise_sigma, embeds, guidance_scale,
                               self._extra_step_kwargs(generator, eta), loop=loop)
        frames = latents if output_type == "latent" else self.postprocess(latents, output_type, decode_chunk_size)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return LatentShiftPipelineOutput(frames=frames)
