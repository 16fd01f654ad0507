"""ControlNet per frame: any SD-1.x / SD-2.x ``diffusers.ControlNetModel`` steers each frame of a video.

The video U-Net is a plain SD U-Net on ``(B·F, C, h, w)`` rows, one row per frame, so a ControlNet trained on
images applies unchanged: it runs on the same rows, each with its own frame's condition image
(``conditioning_frames``), and its residuals go into the shifted U-Net's call (inside the frame count's context,
:func:`ls_video.unet.using_frames`). The ControlNet itself stays an image model: frames do not mix inside it.

Classifier-free guidance as diffusers' ControlNet pipelines: the conditions are duplicated for the negative half,
or with ``guess_mode`` the ControlNet sees only the prompted half and the negative half gets no residuals.
``controlnet_conditioning_scale`` multiplies the residuals; an effective scale of 0 (the scale, or a step outside
``control_guidance_start`` .. ``control_guidance_end``) skips the ControlNet, which is exactly no ControlNet.

:func:`edges` makes a condition video from a video (Sobel edges, white on black, as Canny maps look).
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, UNet2DConditionModel
from einops import rearrange
from PIL import Image

from ls_video.errors import UsageError
from ls_video.unet import fold_video_inputs, using_frames

CONDITIONS = ("none", "edges")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def check_controlnet(controlnet: ControlNetModel, unet: UNet2DConditionModel, vae_scale_factor: int) -> None:
    """One-line :class:`UsageError` when ``controlnet`` cannot steer ``unet`` (another architecture, another
    text encoder width, or a condition embedding that does not land on the latent grid)."""
    if not isinstance(controlnet, ControlNetModel):
        raise UsageError(f"controlnet must be a diffusers ControlNetModel, got {type(controlnet).__name__}")
    c, u = controlnet.config, unet.config
    if tuple(c.block_out_channels) != tuple(u.block_out_channels) or c.layers_per_block != u.layers_per_block:
        raise UsageError(f"the ControlNet's blocks {tuple(c.block_out_channels)} x {c.layers_per_block} do not match "
                         f"the U-Net's {tuple(u.block_out_channels)} x {u.layers_per_block} (a ControlNet of another "
                         "base family?)")
    if c.cross_attention_dim != u.cross_attention_dim:
        raise UsageError(f"the ControlNet's cross_attention_dim {c.cross_attention_dim} is not the U-Net's "
                         f"{u.cross_attention_dim} (SD-1.x and SD-2.x ControlNets are not interchangeable)")
    factor = 2 ** (len(c.conditioning_embedding_out_channels) - 1)
    if factor != vae_scale_factor:
        raise UsageError(f"the ControlNet downsamples its condition images x{factor}, the VAE x{vae_scale_factor}: "
                         "they must match")


def _frames_tensor(frames) -> torch.Tensor:
    """Any accepted ``conditioning_frames`` -> a float tensor ``(F, 3, H, W)`` or ``(B, F, 3, H, W)`` in [0, 1]."""
    if isinstance(frames, Image.Image):
        raise UsageError("conditioning_frames must hold one image per frame (a list), got one image")
    if isinstance(frames, (list, tuple)):
        if not frames:
            raise UsageError("conditioning_frames is empty")
        if all(isinstance(f, Image.Image) for f in frames):
            sizes = {f.size for f in frames}
            if len(sizes) > 1:
                raise UsageError(f"conditioning_frames have different sizes: {sorted(sizes)}")
            frames = np.stack([np.asarray(f.convert("RGB")) for f in frames])
        else:
            frames = np.stack([np.asarray(f) for f in frames])
    if isinstance(frames, np.ndarray):  # (..., H, W, 3), uint8 or floats in [0, 1] (the pipeline's "np" output)
        if frames.ndim not in (4, 5) or frames.shape[-1] != 3:
            raise UsageError(f"conditioning_frames as an array must be (F, H, W, 3) or (B, F, H, W, 3), "
                             f"got {frames.shape}")
        scale = 255.0 if frames.dtype == np.uint8 else 1.0
        tensor = torch.from_numpy(np.ascontiguousarray(frames)).float().div(scale)
        return tensor.movedim(-1, -3)
    if isinstance(frames, torch.Tensor):  # (..., 3, H, W) floats in [0, 1] (diffusers' layout for tensors)
        if frames.ndim not in (4, 5) or frames.shape[-3] != 3:
            raise UsageError(f"conditioning_frames as a tensor must be (F, 3, H, W) or (B, F, 3, H, W), "
                             f"got {tuple(frames.shape)}")
        return frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
    raise UsageError(f"conditioning_frames must be a list of PIL images, an array or a tensor, "
                     f"got {type(frames).__name__}")


def prepare_conditioning_frames(frames, num_frames: int, num_videos: int, height: int, width: int,
                                device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(num_videos·num_frames, 3, height, width)`` condition rows in [0, 1], row ``b·F + f`` for frame ``f`` of
    video ``b`` (the U-Net's fold). One condition video (``F`` frames) serves every video; a ``(B, F, ...)`` batch
    gives each video its own. Frames are resized to ``height`` x ``width`` (bilinear, antialiased)."""
    video = _frames_tensor(frames)
    if video.ndim == 4:
        video = video.unsqueeze(0)
    if video.shape[1] != num_frames:
        raise UsageError(f"conditioning_frames has {video.shape[1]} frames, the video {num_frames} (num_frames)")
    if video.shape[0] not in (1, num_videos):
        raise UsageError(f"conditioning_frames holds {video.shape[0]} condition videos for {num_videos} videos "
                         "(give one, or one per video)")
    rows = rearrange(video, "b f c h w -> (b f) c h w")
    if rows.shape[-2:] != (height, width):
        rows = F.interpolate(rows, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    rows = rows.clamp(0, 1)
    if video.shape[0] == 1:
        rows = rows.repeat(num_videos, 1, 1, 1)
    return rows.to(device=device, dtype=dtype)


class FrameControl:
    """The U-Net call of :meth:`LatentShiftPipeline.denoise` with a ControlNet on every frame row.

    Called as ``control(unet, latents, t, embeds)`` with the arguments of :func:`ls_video.unet.video_unet_forward`
    (``latents`` ``(B, F, C, h, w)``, doubled for CFG with the negative half first; ``embeds`` ``(B, L, D)``, or
    ``(B, F, L, D)`` one embedding per frame) and returns the same ``(B, F, C, h, w)`` prediction.
    """

    def __init__(self, controlnet: ControlNetModel, conditioning_frames: torch.Tensor, timesteps: torch.Tensor,
                 scale: float = 1.0, do_cfg: bool = False, guess_mode: bool = False,
                 control_guidance_start: float = 0.0, control_guidance_end: float = 1.0) -> None:
        if not 0.0 <= control_guidance_start < control_guidance_end <= 1.0:
            raise UsageError(f"need 0 <= control_guidance_start < control_guidance_end <= 1, got "
                             f"{control_guidance_start} and {control_guidance_end}")
        self.controlnet = controlnet
        self.cond = conditioning_frames  # (B·F, 3, H, W): the prompted videos' rows
        self.timesteps = timesteps.detach().cpu()
        self.scale = float(scale)
        self.do_cfg = do_cfg
        self.guess_mode = guess_mode or bool(getattr(controlnet.config, "global_pool_conditions", False))
        self.start, self.end = control_guidance_start, control_guidance_end

    def step_scale(self, t: torch.Tensor | float) -> float:
        """The scale at timestep ``t``: ``scale``, or 0 outside the guidance window (diffusers' ``controlnet_keep``:
        step ``i`` of ``n`` runs when ``start <= i / n`` and ``(i + 1) / n <= end``)."""
        hits = (self.timesteps == torch.as_tensor(t).detach().cpu()).nonzero()
        if not len(hits):  # (a timestep the schedule does not list: keep the ControlNet on)
            return self.scale
        i, n = int(hits[0, 0]), len(self.timesteps)
        return self.scale * (1.0 - float(i / n < self.start or (i + 1) / n > self.end))

    def residuals(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, scale: float) -> dict:
        """The ControlNet's residuals for the folded rows ``x`` (``(B·F, C, h, w)``, CFG-doubled or not), as the
        U-Net's ``down_block_additional_residuals`` / ``mid_block_additional_residual`` keywords."""
        cn = self.controlnet
        half = self.do_cfg and self.guess_mode  # the ControlNet sees the prompted half only
        cond = self.cond if half or not self.do_cfg else torch.cat([self.cond, self.cond])
        if half:
            x, t_cn, context = x.chunk(2)[1], t.chunk(2)[1], context.chunk(2)[1]
        else:
            t_cn = t
        if cond.shape[0] != x.shape[0]:
            raise UsageError(f"{cond.shape[0]} condition rows for {x.shape[0]} frame rows (videos x frames)")
        down, mid = cn(x.to(cn.device, cn.dtype), t_cn.to(cn.device),
                       encoder_hidden_states=context.to(cn.device, cn.dtype),
                       controlnet_cond=cond.to(cn.device, cn.dtype), conditioning_scale=scale,
                       guess_mode=self.guess_mode, return_dict=False)
        if half:  # the negative half gets no residuals (diffusers' ControlNet pipelines in guess mode)
            down = [torch.cat([torch.zeros_like(d), d]) for d in down]
            mid = torch.cat([torch.zeros_like(mid), mid])
        return dict(down_block_additional_residuals=[d.to(x.device, x.dtype) for d in down],
                    mid_block_additional_residual=mid.to(x.device, x.dtype))

    def __call__(self, unet: UNet2DConditionModel, latents: torch.Tensor, timesteps: torch.Tensor | float,
                 encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        b, f = latents.shape[:2]
        x, t, context = fold_video_inputs(latents, timesteps, encoder_hidden_states)
        scale = self.step_scale(t[0])
        extra = self.residuals(x, t, context, scale) if scale != 0.0 else {}
        with using_frames(unet, f):
            out = unet(x, t, encoder_hidden_states=context, return_dict=False, **extra)[0]
        return rearrange(out, "(b f) c h w -> b f c h w", b=b)


def load_controlnet(path: str | os.PathLike, dtype: torch.dtype | None = None) -> ControlNetModel:
    """A diffusers ``ControlNetModel`` from a local folder or a Hub id (:func:`ls_video.hub.resolve`)."""
    from ls_video.hub import resolve

    local = resolve(path, what="ControlNet")
    if not os.path.isfile(os.path.join(local, "config.json")):
        raise FileNotFoundError(f"{path} has no config.json (not a diffusers ControlNetModel folder)")
    kwargs = {"torch_dtype": dtype} if dtype is not None else {}
    return ControlNetModel.from_pretrained(local, **kwargs)


def read_frames(path: str | os.PathLike) -> np.ndarray:
    """``(F, H, W, 3)`` uint8 frames from a video file or a folder of images (sorted by name)."""
    from ls_video.video_io import read_video

    path = os.fspath(path)
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS))
        if not names:
            raise UsageError(f"{path}: no images ({', '.join(IMAGE_EXTENSIONS)})")
        images = [Image.open(os.path.join(path, n)).convert("RGB") for n in names]
        if len({im.size for im in images}) > 1:
            raise UsageError(f"{path}: the images have different sizes")
        return np.stack([np.asarray(im) for im in images])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"conditioning frames not found: {path} (a video file or a folder of images)")
    return read_video(path)[0]


def edges(frames: np.ndarray, threshold: float = 0.2) -> np.ndarray:
    """Edge maps of ``(F, H, W, 3)`` uint8 frames: white where the Sobel gradient of the grey image exceeds
    ``threshold`` times the frame's largest gradient, black elsewhere (the look of a Canny condition)."""
    grey = torch.from_numpy(np.asarray(frames)).float().mean(-1, keepdim=True).permute(0, 3, 1, 2) / 255.0
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([kx, kx.T]).unsqueeze(1)
    grad = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kernels)
    magnitude = grad.pow(2).sum(1).sqrt()
    peak = magnitude.flatten(1).amax(1).clamp_min(1e-6)[:, None, None]
    mask = magnitude > threshold * peak
    return np.repeat((mask.numpy() * 255).astype(np.uint8)[..., None], 3, axis=-1)


def condition_video(path: str | os.PathLike, condition: str = "none") -> np.ndarray:
    """The condition frames ``ls-video sample --conditioning-frames PATH --condition C`` uses: the frames as they
    are (``none``: already condition maps) or made from them (``edges``)."""
    frames = read_frames(path)
    if condition == "none":
        return frames
    if condition == "edges":
        return edges(frames)
    raise UsageError(f"condition must be one of {', '.join(CONDITIONS)}, got {condition!r}")




def frame_control(pipe, controlnet: ControlNetModel | None, conditioning_frames, num_videos: int, num_frames: int,
                  height: int, width: int, do_cfg: bool, scale: float = 1.0, guess_mode: bool = False,
                  control_guidance_start: float = 0.0, control_guidance_end: float = 1.0) -> FrameControl | None:
    """The :class:`FrameControl` of one ``LatentShiftPipeline`` call (after ``scheduler.set_timesteps``), or
    ``None`` without ``conditioning_frames``. ``controlnet``: the call's, else the pipeline's component."""
    given = controlnet is not None
    controlnet = controlnet if given else getattr(pipe, "controlnet", None)
    if conditioning_frames is None:
        if given:
            raise UsageError("controlnet needs conditioning_frames (one condition image per frame)")
        return None
    if controlnet is None:
        raise UsageError("conditioning_frames needs a controlnet (a call argument or the pipeline's component)")
    check_controlnet(controlnet, pipe.unet, pipe.vae_scale_factor)
    cond = prepare_conditioning_frames(conditioning_frames, num_frames, num_videos, height, width,
                                       controlnet.device, controlnet.dtype)
    return FrameControl(controlnet, cond, pipe.scheduler.timesteps, scale, do_cfg, guess_mode,
                        control_guidance_start, control_guidance_end)
