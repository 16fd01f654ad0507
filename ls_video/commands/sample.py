"""Turn prompts into videos with a Latent-Shift model.

    ls-video sample --model outputs/demo/model --prompt "a red square moving left" --out samples
    (or: python sample.py ...)

``--model`` takes a diffusers folder (a plain Stable Diffusion 1.x/2.x folder gets the shift added
to its U-Net), a folder exported by ``python -m ls_video.commands.export``, or a Lightning ``.ckpt`` (its EMA
weights when it holds them, unless ``--raw``: the rule ``export`` follows). A folder is a local path (it exists, or
starts with ``/``, ``./``, ``../``, ``~``) or a Hugging Face Hub id ``ORG/NAME``.
Writes one video per (prompt, seed), ``manifest.json`` and ``contact_sheet.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from ls_video.errors import command

PROG = "ls-video sample"
EPILOG = "Example: ls-video sample --model outputs/demo/model --prompt 'a red square moving left' --out s"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0], epilog=EPILOG)
    p.add_argument("--model", required=True,
                   help="diffusers folder or Hub id (ORG/NAME), exported folder, or Lightning .ckpt")
    p.add_argument("--prompt", action="append", default=[],
                   help="a prompt (repeat for several); 'FRAME:PROMPT|FRAME:PROMPT' travels between prompts")
    p.add_argument("--prompts-file", help="text file with one prompt per line")
    p.add_argument("--negative-prompt", default=None, help="prompt to guide away from")
    p.add_argument("--num-frames", type=int, default=16, help="frames per video (1 gives an image)")
    p.add_argument("--height", type=int, default=None, help="pixels (default: the model's native size)")
    p.add_argument("--width", type=int, default=None, help="pixels (default: the model's native size)")
    p.add_argument("--num-inference-steps", type=int, default=50, help="denoising steps")
    p.add_argument("--guidance-scale", type=float, default=7.5, help="classifier-free guidance weight")
    p.add_argument("--scheduler", default="ddim", choices=["ddim", "dpm", "euler"], help="sampler")
    p.add_argument("--seed", type=int, default=0, help="first seed; video k of a prompt uses seed+k")
    p.add_argument("--num-videos-per-prompt", type=int, default=1, help="videos (seeds) per prompt")
    p.add_argument("--batch-size", type=int, default=8, help="videos denoised together")
    p.add_argument("--fps", type=float, default=8, help="frame rate of the written files")
    p.add_argument("--format", default="mp4", choices=["mp4", "gif"], help="video file format")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--raw", action="store_true",
                         help="a .ckpt's raw weights (default: its EMA weights when it holds them, as export does)")
    weights.add_argument("--ema", action="store_true", help="a .ckpt's EMA weights; an error when it has none")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="weights dtype for sampling")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the U-Net (CUDA graphs on a GPU): faster from the second batch on, "
                        "the first pays about a minute of compilation at SD-1.5 size")
    p.add_argument("--controlnet", default=None,
                   help="a diffusers ControlNetModel folder or Hub id (SD-1.x/2.x, the base's family) for every frame")
    p.add_argument("--conditioning-frames", default=None,
                   help="the ControlNet's condition per frame: a video file or a folder of images (sorted by name), "
                        "as many frames as --num-frames")
    p.add_argument("--condition", default="none", choices=["none", "edges"],
                   help="none: --conditioning-frames are condition maps already; edges: make edge maps of them")
    p.add_argument("--controlnet-conditioning-scale", type=float, default=1.0,
                   help="weight of the ControlNet's residuals (0: no ControlNet)")
    p.add_argument("--guess-mode", action="store_true", help="the ControlNet sees only the prompted CFG half")
    p.add_argument("--prompt-interpolation", default="linear", choices=["linear", "hold"],
                   help="prompt travel: embeddings linear between key frames, or held until the next key")
    p.add_argument("--video", help="input video for video-to-video (its length is --num-frames)")
    p.add_argument("--strength", type=float, default=None,
                   help="video-to-video: share of the steps redone (0: the input, 1: text-to-video; default 0.8)")
    p.add_argument("--image", help="image-to-video: an image held as the first frame")
    p.add_argument("--last-image", help="an image held as the last frame")
    p.add_argument("--out", required=True, help="folder for videos and manifest.json")
    p.add_argument("--loop", action="store_true", help="a seamless loop: the shift wraps around the clip's ends")
    p.add_argument("--context-length", type=int, default=None,
                   help="denoise in overlapping windows of this many frames (memory bound for long clips)")
    p.add_argument("--context-stride", type=int, default=4, help="frames between window starts")
    p.add_argument("--weighting-scheme", default="pyramid", choices=["pyramid", "flat"],
                   help="how overlapping windows blend")
    p.add_argument("--noise-type", default="shuffle_context", choices=["shuffle_context", "repeat_context", "random"],
                   help="initial noise of later windows (FreeNoise; with --context-length)")
    args = p.parse_args(argv)
    for name in ("video", "image", "last_image"):
        if getattr(args, name) and not os.path.isfile(getattr(args, name)):
            p.error(f"--{name.replace('_', '-')} not found: {getattr(args, name)}")
    if args.strength is not None and not args.video:
        p.error("--strength needs --video")
    if args.strength is not None and not 0 <= args.strength <= 1:
        p.error("--strength must be in [0, 1]")
    if args.prompts_file:
        if not os.path.isfile(args.prompts_file):
            p.error(f"prompts file not found: {args.prompts_file}")
        with open(args.prompts_file) as f:
            args.prompt += [line.strip() for line in f if line.strip()]
    if not args.prompt:
        p.error("give at least one --prompt or a --prompts-file")
    for name in ("num_frames", "num_inference_steps", "num_videos_per_prompt", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.fps <= 0:
        p.error("--fps must be > 0")
    if args.controlnet and not args.conditioning_frames:
        p.error("--controlnet needs --conditioning-frames (a video or a folder of images)")
    if args.conditioning_frames and not os.path.exists(args.conditioning_frames):
        p.error(f"conditioning frames not found: {args.conditioning_frames} (a video file or a folder of images)")
    from ls_video.conditioning import parse_travel
    from ls_video.errors import UsageError

    try:
        args.travel = [parse_travel(prompt) for prompt in args.prompt]
        args.negative_travel = None if args.negative_prompt is None else parse_travel(args.negative_prompt)
    except UsageError as err:
        p.error(str(err))
    if args.context_length is not None and args.context_length < 1:
        p.error("--context-length must be >= 1")
    if args.context_length is not None and not 1 <= args.context_stride <= args.context_length:
        p.error("--context-stride must be between 1 and --context-length")
    return args


def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def run(args: argparse.Namespace) -> list[dict]:
    import numpy as np
    import torch
    from PIL import Image

    from ls_video.checkpoint import load_pipeline
    from ls_video.schedulers import make_scheduler
    from ls_video.video_io import contact_sheet, read_video, to_uint8, write_video

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(args.model, ema=False if args.raw else (True if args.ema else None))
    ema = getattr(pipe, "ema_weights", None)  # (a .ckpt: which weights checkpoint.uses_ema chose; said on stderr)
    pipe.scheduler = make_scheduler(args.scheduler, pipe.scheduler.config)
    if args.compile:
        pipe.compile_unet()
    cond = control_inputs(pipe, args)
    if args.context_length is not None:
        pipe.enable_free_noise(args.context_length, args.context_stride, args.weighting_scheme, args.noise_type)
    pipe.to(device)
    if args.dtype != "float32":
        pipe.to(dtype=getattr(torch, args.dtype))
    os.makedirs(args.out, exist_ok=True)
    given = dict(prompt_interpolation=args.prompt_interpolation,
                 image=Image.open(args.image).convert("RGB") if args.image else None,
                 last_image=Image.open(args.last_image).convert("RGB") if args.last_image else None)
    if args.video:
        given.update(video=read_video(args.video)[0], strength=0.8 if args.strength is None else args.strength)
    inputs = {k: v for k, v in dict(video=args.video, strength=given.get("strength"), image=args.image,
                                   last_image=args.last_image).items() if v is not None}

    jobs = [(i, prompt, args.seed + k) for i, prompt in enumerate(args.prompt)
            for k in range(args.num_videos_per_prompt)]
    samples, firsts = [], []
    for start in range(0, len(jobs), args.batch_size):
        chunk = jobs[start : start + args.batch_size]
        generators = [torch.Generator(device).manual_seed(seed) for _, _, seed in chunk]
        videos = pipe([args.travel[i] for i, _, _ in chunk], num_frames=args.num_frames, height=args.height,
                      width=args.width, num_inference_steps=args.num_inference_steps,
                      guidance_scale=args.guidance_scale,
                      negative_prompt=args.negative_travel, generator=generators, loop=args.loop, **cond,
                      **given).frames
        for (i, prompt, seed), video in zip(chunk, videos, strict=True):
            name = f"{i:03d}_{slug(prompt)}_s{seed}.{args.format}"
            write_video(os.path.join(args.out, name), video, fps=args.fps)
            firsts.append(to_uint8(video))
            samples.append(dict(prompt=prompt, seed=seed, file=name, num_frames=int(video.shape[0]),
                                height=int(video.shape[1]), width=int(video.shape[2]), steps=args.num_inference_steps,
                                guidance_scale=args.guidance_scale, scheduler=args.scheduler, fps=args.fps,
                                ema=ema, **inputs))
    windows = None if args.context_length is None else dict(
        context_length=args.context_length, context_stride=args.context_stride,
        weighting_scheme=args.weighting_scheme, noise_type=args.noise_type)
    for sample in samples:  # (long videos and loops: how the clip was denoised)
        sample.update(loop=args.loop, context_windows=windows)
    Image.fromarray(contact_sheet(np.stack(firsts[:64]))).save(os.path.join(args.out, "contact_sheet.png"))
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump({"model": str(args.model), "samples": samples}, f, indent=2)
    return samples


def control_inputs(pipe, args: argparse.Namespace) -> dict:
    """Adds ``--controlnet`` to ``pipe`` (as its component) and returns the pipeline's ControlNet arguments."""
    if not args.conditioning_frames:
        return {}
    from ls_video.controlnet import condition_video, load_controlnet

    if args.controlnet:
        pipe.register_modules(controlnet=load_controlnet(args.controlnet))
    return dict(conditioning_frames=condition_video(args.conditioning_frames, args.condition),
                controlnet_conditioning_scale=args.controlnet_conditioning_scale, guess_mode=args.guess_mode)


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    samples = run(args)
    print(f"wrote {len(samples)} videos and manifest.json to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
