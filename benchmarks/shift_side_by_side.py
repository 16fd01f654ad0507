"""The shift's CPU training cost of any checkout, with one harness for all (to compare commits side by side).

    python benchmarks/shift_side_by_side.py ROOT [--latent 32] [--reps 2] [--warmup 1] [--profile PREFIX]

Imports ``ls_video`` from the checkout ``ROOT`` (only ``presets.sd15_unet`` and ``unet.TemporalConfig``,
``apply_temporal_mixing``, ``video_unet_forward``, which every commit since 2026-11-26 has), then times
forward + backward of the SD-1.5-sized U-Net on one clip of 16 frames, shift and none alternating with the
order rotated per round (as ``ls_video.timing.alternate``). Prints the medians of wall and process-CPU time
and their ratios. Run it for two checkouts in turn, several times (a shared machine is noisy).
``--profile PREFIX`` writes one ``torch.profiler`` table and trace per variant instead.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def profile_variants(step, prefix: str) -> None:
    """One profiled forward + backward per variant (after one untimed): ``PREFIX_{none,shift}.txt/.json``."""
    from torch.profiler import ProfilerActivity, profile

    for mixing in ("none", "shift"):
        step(mixing)()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(mixing)()
        with open(f"{prefix}_{mixing}.txt", "w") as f:
            f.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
        prof.export_chrome_trace(f"{prefix}_{mixing}.json")


def time_variants(step, reps: int, warmup: int) -> tuple[dict, dict]:
    """Wall and process-CPU seconds per variant, the order rotated each round; first ``warmup`` rounds dropped."""
    names = ["none", "shift"]
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(reps + warmup):
        for name in names[rep % 2:] + names[: rep % 2]:
            fn = step(name)
            w, c = time.perf_counter(), time.process_time()
            fn()
            if rep >= warmup:
                wall[name].append(time.perf_counter() - w)
                cpu[name].append(time.process_time() - c)
    return wall, cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("root", help="checkout whose ls_video is measured")
    p.add_argument("--latent", type=int, default=32, help="latent height and width")
    p.add_argument("--reps", type=int, default=2, help="timed rounds")
    p.add_argument("--warmup", type=int, default=1, help="untimed first rounds")
    p.add_argument("--profile", default=None, help="write PREFIX_{none,shift}.txt/.json instead of timing")
    args = p.parse_args()
    sys.path.insert(0, args.root)
    import torch

    from ls_video.unet import TemporalConfig, apply_temporal_mixing, video_unet_forward

    try:
        from ls_video.testing.presets import sd15_unet
    except ImportError:  # checkouts from before the testing/ sub-package
        from ls_video.presets import sd15_unet

    torch.manual_seed(0)
    unet = sd15_unet()
    x, t, ctx = torch.randn(1, 16, 4, args.latent, args.latent), torch.full((1,), 500), torch.randn(1, 77, 768)

    def step(mixing: str):
        apply_temporal_mixing(unet, TemporalConfig(mixing))
        unet.zero_grad(set_to_none=True)
        return lambda: video_unet_forward(unet, x, t, ctx).float().square().mean().backward()

    if args.profile:
        profile_variants(step, args.profile)
        return
    wall, cpu = time_variants(step, args.reps, args.warmup)
    shift, none = statistics.median(wall["shift"]), statistics.median(wall["none"])
    print(f"root={args.root} threads={torch.get_num_threads()} latent={args.latent} shift_ms={shift * 1000:.0f} "
          f"none_ms={none * 1000:.0f} ratio={shift / none:.4f} "
          f"cpu_ratio={statistics.median(cpu['shift']) / statistics.median(cpu['none']):.4f} "
          f"all_shift_ms={[round(v * 1000) for v in wall['shift']]} "
          f"all_none_ms={[round(v * 1000) for v in wall['none']]}", flush=True)


if __name__ == "__main__":
    main()
