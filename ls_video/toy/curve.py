"""Direction accuracy against training time: evaluate every checkpoint of a toy run.

    ls-video curve RUN_DIR [--num-videos-per-prompt 2] [--num-inference-steps 25] [--num-frames 6] [--device cuda]

For each ``RUN_DIR/checkpoints/*.ckpt`` (EMA weights when present, unless ``--raw``) it samples the 32 toy prompts
x ``--num-videos-per-prompt`` seeds (seeds start at 1000, away from the demo's), scores them with
``ls_video.metrics.toy`` and prints one markdown row per checkpoint; ``RUN_DIR/curve.json`` keeps them.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import torch

from ls_video.checkpoint import load_checkpoint, pipeline_from_checkpoint
from ls_video.errors import command
from ls_video.toy.check import sample_and_score
from ls_video.toy.world import all_prompts


def evaluate_checkpoint(path: str, seeds: int, steps: int, frames: int, guidance: float, seed0: int = 1000,
                        device: str = "cpu", return_videos: bool = False, raw: bool = False) -> dict:
    ckpt = load_checkpoint(path)
    # EMA weights when present, unless raw: checkpoint.uses_ema, the rule of export and sample (said on stderr)
    pipe = pipeline_from_checkpoint(ckpt, ema=False if raw else None, source=path).to(device)
    prompts = [p for p in all_prompts() for _ in range(seeds)]
    start = time.perf_counter()
    scores, videos = sample_and_score(pipe, prompts, [seed0 + i % seeds for i in range(len(prompts))], frames, steps,
                                      guidance)
    result = {k: v for k, v in scores.items() if k != "rows"}
    result.update(step=int(ckpt["global_step"]), sample_seconds=round(time.perf_counter() - start, 1))
    if return_videos:
        result["videos"] = [(v * 255).round().astype("uint8") for v in videos]
    return result


@command("ls-video curve")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ls-video curve", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", help="a train.py default_root_dir (holds checkpoints/)")
    p.add_argument("--num-videos-per-prompt", type=int, default=2, help="videos (seeds) per prompt (64 videos with 2)")
    p.add_argument("--num-inference-steps", type=int, default=25, help="DDIM steps")
    p.add_argument("--num-frames", type=int, default=6, help="frames per video")
    p.add_argument("--guidance-scale", type=float, default=4.0, help="classifier-free guidance")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where to sample (default: cuda when available)")
    p.add_argument("--raw", action="store_true", help="score the raw weights (default: EMA weights when present)")
    args = p.parse_args(argv)
    paths = sorted(glob.glob(os.path.join(args.run_dir, "checkpoints", "step*.ckpt")))
    if not paths:
        raise FileNotFoundError(f"no step*.ckpt in {args.run_dir}/checkpoints")
    rows = []
    print("| step | direction | steps right | colour | shape | consistency |\n|---|---|---|---|---|---|")
    for path in paths:
        r = evaluate_checkpoint(path, args.num_videos_per_prompt, args.num_inference_steps, args.num_frames,
                                args.guidance_scale, device=args.device, raw=args.raw)
        rows.append(r)
        print(f"| {r['step']} | {r['direction_acc']:.2f} | {r['step_acc']:.2f} | {r['color_acc']:.2f} | "
              f"{r['shape_acc']:.2f} | {r['consistency']:.2f} |", flush=True)
    with open(os.path.join(args.run_dir, "curve.json"), "w") as f:
        json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
