"""Cost of the temporal shift: U-Net step time with shift / without, measured side by side.

    python benchmarks/shift_overhead.py [--reps 5] [--clips 1,4] [--frames 16] [--latent 32]
        [--modes eager,compiled] [--compile-clips 4] [--compile-passes fwd_bwd] [--skip-toy] [--skip-sd15]
        [--device cpu|cuda] [--dtype bfloat16]

For the toy U-Net and an SD-1.5-sized U-Net (random init), clips of 16 frames of 32x32 latents:
median forward (no grad, as in sampling) and forward+backward times, shift on and off alternating
in one run, and their ratio; eager and/or (``--modes``) regionally compiled
(``ls_video.compile.compile_regions``, as ``--model.compile_unet true`` trains; compilation is
excluded from the timing). One row per (model, mode, clips, pass). Last lines:
``shift_overhead_ratio=<SD-1.5 eager fwd+bwd, first --clips>`` and, for compiled mode,
``compiled_shift_overhead_ratio=<SD-1.5 compiled fwd+bwd, last --compile-clips>``.
Targets: <= 1.03 eager (CPU and GPU, one clip), <= 1.01 compiled at 4 clips on a GPU.
"""

from __future__ import annotations

import argparse

import torch

from ls_video.compile import compile_regions
from ls_video.testing.presets import sd15_unet
from ls_video.testing.timing import alternate, unet_pass
from ls_video.toy.make_base import toy_unet

PASSES = ("fwd", "fwd_bwd")


def measure(unet, clips: int, frames: int, latent: int, reps: int, device: str, dtype, backward: bool) -> tuple:
    """Median seconds with shift and without for one call of ``clips`` clips; returns (shift, none)."""
    ctx_dim = unet.config.cross_attention_dim
    x = torch.randn(clips, frames, 4, latent, latent, device=device, dtype=dtype)
    t = torch.full((clips,), 500, device=device)
    ctx = torch.randn(clips, 77 if ctx_dim > 100 else 8, ctx_dim, device=device, dtype=dtype)

    def variant(mixing: str):
        return unet_pass(unet, mixing, x, t, ctx, backward)

    medians = alternate({m: variant(m) for m in ("none", "shift")}, reps, device, warmup=2)
    return medians["shift"], medians["none"]


def run_model(name: str, unet, args, dtype, compiled: bool) -> dict:
    clips_list = args.compile_clips if compiled else args.clips
    passes = args.compile_passes if compiled else PASSES
    unet = unet.to(args.device, dtype)
    if compiled:
        compile_regions(unet)
    mode = "compiled" if compiled else "eager"
    out = {}
    for clips in clips_list:
        for key in passes:
            shift, none = measure(unet, clips, args.frames, args.latent, args.reps, args.device, dtype,
                                  key == "fwd_bwd")
            out[(clips, key)] = shift / none
            print(f"{name:>5} {mode:>8} clips={clips} {key:>7}: shift {shift * 1000:9.1f} ms  "
                  f"none {none * 1000:9.1f} ms  ratio {shift / none:.3f}", flush=True)
    return out


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def pass_list(text: str) -> list[str]:
    values = text.split(",")
    if not set(values) <= set(PASSES):
        raise argparse.ArgumentTypeError(f"passes are {', '.join(PASSES)}; got {text}")
    return values


def mode_list(text: str) -> list[str]:
    values = text.split(",")
    if not set(values) <= {"eager", "compiled"}:
        raise argparse.ArgumentTypeError(f"modes are eager, compiled; got {text}")
    return values


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per variant (median)")
    p.add_argument("--clips", type=int_list, default=[1, 4], help="clips per call, comma-separated")
    p.add_argument("--frames", type=int, default=16, help="frames per clip")
    p.add_argument("--latent", type=int, default=32, help="latent height and width")
    p.add_argument("--modes", type=mode_list, default=["eager"], help="eager and/or compiled (regional compile)")
    p.add_argument("--compile-clips", type=int_list, default=None, help="clips for compiled rows (default --clips)")
    p.add_argument("--compile-passes", type=pass_list, default=list(PASSES), help="fwd and/or fwd_bwd")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weights dtype")
    p.add_argument("--skip-toy", action="store_true", help="only the SD-1.5-sized U-Net")
    p.add_argument("--skip-sd15", action="store_true", help="only the toy U-Net")
    args = p.parse_args()
    args.compile_clips = args.compile_clips or args.clips
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    print(f"device={args.device} dtype={args.dtype} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"frames={args.frames} latent={args.latent}x{args.latent}", flush=True)
    if args.device.startswith("cuda"):
        print(f"card={torch.cuda.get_device_name()}", flush=True)
    models = [] if args.skip_toy else [("toy", lambda: toy_unet((32, 64), 64, args.latent))]
    models += [] if args.skip_sd15 else [("sd15", sd15_unet)]
    results = {}
    for mode in args.modes:
        for name, make in models:
            results[(name, mode == "compiled")] = run_model(name, make(), args, dtype, mode == "compiled")
    if not args.skip_sd15:
        if "eager" in args.modes:
            print(f"shift_overhead_ratio={results[('sd15', False)][(args.clips[0], 'fwd_bwd')]:.3f}")
        if "compiled" in args.modes and "fwd_bwd" in args.compile_passes:
            ratio = results[("sd15", True)][(args.compile_clips[-1], "fwd_bwd")]
            print(f"compiled_shift_overhead_ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
