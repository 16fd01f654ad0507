"""Sampling speed: seconds per 16-frame video, with and without the shift, eager and compiled, side by side.

    python benchmarks/sample_speed.py [--model toy|sd15] [--frames 16] [--steps 50] [--size 256]
        [--reps 3] [--device cpu|cuda] [--dtype bfloat16] [--compile]

``toy``: the committed toy base (``assets/toy-base``, 32x32). ``sd15``: SD-1.5-sized components with
random weights (the timing does not depend on the weights) at ``--size`` pixels, meant for a GPU.
One prompt, classifier-free guidance 7.5 (two U-Net passes per step), DDIM, VAE decode of every
frame included. ``--compile`` adds ``LatentShiftPipeline(..., compile=True)`` variants (the whole
U-Net compiled; CUDA graphs on a GPU); their first call (compilation, CUDA-graph recording) is timed
and printed as the warm-up cost, then excluded. Last line: ``seconds_per_video=<fastest with shift>``.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from ls_video.components import build_pipeline
from ls_video.pipeline import LatentShiftPipeline
from ls_video.testing.timing import alternate, timed
from ls_video.unet import TemporalConfig, apply_temporal_mixing

ROOT = Path(__file__).resolve().parents[1]


def build(model: str, device: str) -> LatentShiftPipeline:
    if model == "toy":
        return LatentShiftPipeline.from_pretrained(str(ROOT / "assets" / "toy-base"))
    from ls_video.testing.presets import sd15_components

    with torch.device(device):  # random init where it runs: fast
        parts = sd15_components()
    return build_pipeline(parts)


def variants(base: LatentShiftPipeline, compiled: bool) -> dict[str, LatentShiftPipeline]:
    """One pipeline per (mode, mixing); they share the VAE and text encoder, each has its own U-Net."""
    out = {}
    for mixing in ("shift", "none"):
        unet = apply_temporal_mixing(copy.deepcopy(base.unet), TemporalConfig(mixing))
        pipe = LatentShiftPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                   unet=unet, scheduler=base.scheduler, compile=compiled)
        pipe.set_progress_bar_config(disable=True)
        out[f"{'compiled' if compiled else 'eager'} {mixing}"] = pipe
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="toy", choices=["toy", "sd15"], help="which architecture")
    p.add_argument("--frames", type=int, default=16, help="frames per video")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: 25 toy, 50 sd15)")
    p.add_argument("--size", type=int, default=None, help="height = width in pixels (default: 32 toy, 256 sd15)")
    p.add_argument("--reps", type=int, default=3, help="timed videos per variant (median)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model dtype")
    p.add_argument("--compile", action="store_true", help="also time compiled (CUDA-graph) pipelines")
    args = p.parse_args()
    steps = args.steps or (25 if args.model == "toy" else 50)
    size = args.size or (32 if args.model == "toy" else 256)
    base = build(args.model, args.device).to(args.device, getattr(torch, args.dtype))
    pipes = variants(base, False)
    if args.compile:
        pipes.update(variants(base, True))
    for pipe in pipes.values():
        pipe.to(args.device, getattr(torch, args.dtype))
    kw = dict(num_frames=args.frames, height=size, width=size, num_inference_steps=steps, guidance_scale=7.5,
              output_type="np")

    def call(pipe: LatentShiftPipeline):
        return lambda: pipe(["a red square moving left"], generator=torch.Generator().manual_seed(0), **kw)

    print(f"model={args.model} device={args.device} dtype={args.dtype} torch={torch.__version__} "
          f"frames={args.frames} size={size} steps={steps} compile={args.compile}", flush=True)
    for name, pipe in pipes.items():
        if name.startswith("compiled"):
            start = time.perf_counter()
            timed(call(pipe), args.device)
            first = time.perf_counter() - start
            timed(call(pipe), args.device)  # CUDA graphs record on the second call
            print(f"{name}: warm-up (compile + graph recording) {first:.1f} s", flush=True)
    medians = alternate({name: (lambda pipe=pipe: call(pipe)) for name, pipe in pipes.items()}, args.reps,
                        args.device)
    for mode in ("eager", "compiled") if args.compile else ("eager",):
        shift, none = medians[f"{mode} shift"], medians[f"{mode} none"]
        print(f"{mode:>8}: shift {shift:.3f} s/video  none {none:.3f} s/video  ratio {shift / none:.3f}", flush=True)
    best = min(v for k, v in medians.items() if k.endswith("shift"))
    print(f"seconds_per_video={best:.3f}")


if __name__ == "__main__":
    main()
