"""Sampling speed: seconds per 16-frame video, with and without the shift, measured side by side.

    python benchmarks/sample_speed.py [--model toy|sd15] [--frames 16] [--steps 50] [--size 256]
        [--reps 3] [--device cpu|cuda] [--dtype bfloat16] [--compile]

``toy``: the committed toy base (``assets/toy-base``, 32x32) on CPU. ``sd15``: SD-1.5-sized
components with random weights (the timing does not depend on the weights) at ``--size`` pixels,
meant for a GPU. Classifier-free guidance 7.5 (two U-Net passes per step), DDIM, VAE decode of every
frame included; the prompt is encoded once. Last line: ``seconds_per_video=<with shift>``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ls_video.pipeline import LatentShiftPipeline  # noqa: E402
from ls_video.timing import alternate  # noqa: E402
from ls_video.unet import TemporalConfig, apply_temporal_mixing  # noqa: E402


def build(model: str, device: str) -> LatentShiftPipeline:
    if model == "toy":
        return LatentShiftPipeline.from_pretrained(str(ROOT / "assets" / "toy-base"))
    from ls_video.presets import sd15_components

    with torch.device(device):  # random init where it runs: fast
        parts = sd15_components()
    parts.pop("noise_scheduler")
    return LatentShiftPipeline(**parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="toy", choices=["toy", "sd15"], help="which architecture")
    p.add_argument("--frames", type=int, default=16, help="frames per video")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: 25 toy, 50 sd15)")
    p.add_argument("--size", type=int, default=None, help="height = width in pixels (default: 32 toy, 256 sd15)")
    p.add_argument("--reps", type=int, default=3, help="timed videos per variant (median)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model dtype")
    p.add_argument("--compile", action="store_true", help="torch.compile the U-Net (warm-up excluded)")
    args = p.parse_args()
    steps = args.steps or (25 if args.model == "toy" else 50)
    size = args.size or (32 if args.model == "toy" else 256)
    pipe = build(args.model, args.device).to(args.device, getattr(torch, args.dtype))
    pipe.set_progress_bar_config(disable=True)
    if args.compile:
        pipe.unet.compile()
    kw = dict(num_frames=args.frames, height=size, width=size, num_inference_steps=steps, guidance_scale=7.5,
              output_type="np")

    def variant(mixing: str):
        def setup():
            apply_temporal_mixing(pipe.unet, TemporalConfig(mixing))
            return lambda: pipe(["a red square moving left"], generator=torch.Generator().manual_seed(0), **kw)
        return setup

    print(f"model={args.model} device={args.device} dtype={args.dtype} frames={args.frames} size={size} "
          f"steps={steps} compile={args.compile}", flush=True)
    medians = alternate({"shift": variant("shift"), "none": variant("none")}, args.reps, args.device)
    print(f"shift {medians['shift']:.2f} s/video  none {medians['none']:.2f} s/video  "
          f"ratio {medians['shift'] / medians['none']:.3f}")
    print(f"seconds_per_video={medians['shift']:.2f}")


if __name__ == "__main__":
    main()
