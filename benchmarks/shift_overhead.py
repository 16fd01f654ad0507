"""Cost of the temporal shift: U-Net step time with shift / without, measured side by side.

    python benchmarks/shift_overhead.py [--reps 5] [--frames 16] [--latent 32] [--skip-sd15] [--device cpu]

For the toy U-Net and an SD-1.5-sized U-Net (random init), 16 frames of 32x32 latents: median
forward+backward and forward-only times, shift on and off alternating in one run, and their ratio.
Last line: ``shift_overhead_ratio=<SD-1.5-size fwd+bwd ratio>`` (target <= 1.03 on CPU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ls_video.presets import sd15_unet  # noqa: E402
from ls_video.timing import alternate  # noqa: E402
from ls_video.toy.make_base import toy_unet  # noqa: E402
from ls_video.unet import TemporalConfig, apply_temporal_mixing, video_unet_forward  # noqa: E402


def measure(name: str, unet, frames: int, latent: int, reps: int, device: str, dtype) -> dict:
    unet = unet.to(device, dtype)
    ctx_dim = unet.config.cross_attention_dim
    x = torch.randn(1, frames, 4, latent, latent, device=device, dtype=dtype)
    t = torch.tensor([500], device=device)
    ctx = torch.randn(1, 77 if ctx_dim > 100 else 8, ctx_dim, device=device, dtype=dtype)

    def variant(mixing: str, backward: bool):
        def setup():
            apply_temporal_mixing(unet, TemporalConfig(mixing))
            unet.zero_grad(set_to_none=True)
            if backward:
                return lambda: video_unet_forward(unet, x, t, ctx).float().square().mean().backward()
            return lambda: torch.no_grad()(video_unet_forward)(unet, x, t, ctx)
        return setup

    out = {}
    for backward in (False, True):
        medians = alternate({m: variant(m, backward) for m in ("none", "shift")}, reps, device)
        key = "fwd_bwd" if backward else "fwd"
        shift, none = medians["shift"], medians["none"]
        out[key] = (shift, none, shift / none)
        print(f"{name:>6} {key:>7}: shift {shift * 1000:9.1f} ms  none {none * 1000:9.1f} ms  ratio {shift / none:.3f}",
              flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per variant (median)")
    p.add_argument("--frames", type=int, default=16, help="frames per clip")
    p.add_argument("--latent", type=int, default=32, help="latent height and width")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weights dtype")
    p.add_argument("--skip-sd15", action="store_true", help="only the toy U-Net")
    args = p.parse_args()
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    print(f"device={args.device} dtype={args.dtype} threads={torch.get_num_threads()} frames={args.frames} "
          f"latent={args.latent}x{args.latent}")
    measure("toy", toy_unet((32, 64), 64, args.latent), args.frames, args.latent, args.reps, args.device, dtype)
    if args.skip_sd15:
        return
    sd = measure("sd15", sd15_unet(), args.frames, args.latent, args.reps, args.device, dtype)
    print(f"sd15_forward_ratio={sd['fwd'][2]:.3f}")
    print(f"shift_overhead_ratio={sd['fwd_bwd'][2]:.3f}")


if __name__ == "__main__":
    main()
