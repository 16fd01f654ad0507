"""Cost of each temporal-mixing variant at real size: parameters, FLOPs and step-time ratios.

    python benchmarks/efficiency.py [--frames 16] [--latent 32] [--reps 3] [--device cpu|cuda] [--dtype bfloat16]

SD-1.5-sized U-Net (random init), one clip of ``--frames`` frames of ``--latent``x``--latent``x4
latents, 77 text tokens: for ``none``, ``shift``, ``temporal_conv`` and ``temporal_attention`` it
prints the added parameters, FLOPs per denoising step (``torch.utils.flop_counter`` on the meta
device) and forward / forward+backward times as ratios to ``none``, all measured side by side in one
run. Last line: ``efficiency_shift_fwd_bwd_ratio=<shift / none>``.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from ls_video.temporal_layers import added_parameters
from ls_video.testing.presets import sd15_unet
from ls_video.testing.timing import alternate, unet_pass
from ls_video.unet import (
    MIXINGS,
    TemporalConfig,
    apply_temporal_mixing,
    video_unet_forward,
)


def flops_per_step(mixing: str, frames: int, latent: int) -> int:
    """Forward FLOPs of one denoising step (one U-Net call on the clip), counted on the meta device."""
    with torch.device("meta"):
        unet = apply_temporal_mixing(sd15_unet(), TemporalConfig(mixing))
        x = torch.randn(1, frames, 4, latent, latent)
        ctx = torch.randn(1, 77, unet.config.cross_attention_dim)
        t = torch.tensor([500])
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        video_unet_forward(unet, x, t, ctx)
    return counter.get_total_flops()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=16, help="frames per clip")
    p.add_argument("--latent", type=int, default=32, help="latent height and width (32 = 256x256 pixels)")
    p.add_argument("--reps", type=int, default=3, help="timed rounds (median); one warm-up round is extra")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weights dtype")
    p.add_argument("--variants", default=",".join(MIXINGS), help="comma-separated temporal_mixing values")
    args = p.parse_args()
    variants = args.variants.split(",")
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    with torch.device(args.device):
        unet = sd15_unet().to(dtype)
    base_params = sum(q.numel() for q in unet.parameters())
    x = torch.randn(1, args.frames, 4, args.latent, args.latent, device=args.device, dtype=dtype)
    ctx = torch.randn(1, 77, unet.config.cross_attention_dim, device=args.device, dtype=dtype)
    t = torch.tensor([500], device=args.device)
    print(f"device={args.device} dtype={args.dtype} threads={torch.get_num_threads()} frames={args.frames} "
          f"latent={args.latent}x{args.latent} base_params={base_params:,}", flush=True)

    def prepare(mixing: str, backward: bool):
        return unet_pass(unet, mixing, x, t, ctx, backward)

    rows = {}
    for mixing in variants:
        apply_temporal_mixing(unet, TemporalConfig(mixing))
        rows[mixing] = dict(added=added_parameters(unet), gflops=flops_per_step(mixing, args.frames, args.latent) / 1e9)
    for backward in (False, True):
        key = "fwd_bwd" if backward else "fwd"
        medians = alternate({m: prepare(m, backward) for m in variants}, args.reps, args.device)
        for m in variants:
            rows[m][key] = medians[m]
    ref = rows.get("none", next(iter(rows.values())))
    print("| variant | added params | GFLOPs / step | fwd ms | fwd ratio | fwd+bwd ms | fwd+bwd ratio |")
    print("|---|---|---|---|---|---|---|")
    for m, r in rows.items():
        print(f"| {m} | {r['added']:,} | {r['gflops']:.1f} | {r['fwd'] * 1e3:.1f} | {r['fwd'] / ref['fwd']:.3f} | "
              f"{r['fwd_bwd'] * 1e3:.1f} | {r['fwd_bwd'] / ref['fwd_bwd']:.3f} |", flush=True)
    if "shift" in rows:
        print(f"efficiency_shift_fwd_bwd_ratio={rows['shift']['fwd_bwd'] / ref['fwd_bwd']:.3f}")


if __name__ == "__main__":
    main()
