"""Long clips on the wrapped toy world (issue 36, item 7; docs/RESULTS.md "Long clips").

    python -m ls_video.toy.long_clips [--out outputs/long] [--steps 700] [--frames 8 16 32 64] [--seeds 1]
        [--trainer.X V --model.X V --data.X V ...]   (train.py overrides for both arms)

Trains a shift model and a temporal-attention model (the ablation's ``temporal_attention``) with
``configs/toy.yaml`` on 8-frame clips of the wrapped world (``ToyWorld(wrap=True)``: the object leaves one edge
and comes back at the other, so a direction holds for any length), then samples both from their EMA weights at
every ``--frames`` count in one pass (8 toy prompts, two per direction, or ``--prompts``, x ``--seeds``
held-out seeds from 1000; one video per call) and scores the
frames with the wrap-aware metrics of :mod:`ls_video.metrics.toy`: direction over the whole clip, steps right,
identity held, single object, the loop seam ratio (``|last - first frame|`` over the mean neighbour
difference), seconds per video and the sampling process's peak memory (each row in its own process: peak RSS on
a CPU, ``torch.cuda.max_memory_allocated`` on a GPU). The rendered ground truth gets a row per length too (the
metrics' ceiling). A finished arm (``OUT/ARM/checkpoints/last.ckpt`` at ``--steps``) is reused. Prints a
markdown table and writes ``--json`` (default ``OUT/long.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from ls_video.errors import UsageError, command

ARMS: dict[str, list[str]] = {
    "shift": [],
    "temporal_attention": ["--model.temporal.temporal_mixing", "temporal_attention"],
}
TRAIN_FRAMES = 8
# Two per direction, every colour and shape among them (the default: 32 prompts x 120 frames does not fit a CPU)
PROMPTS = ["a red square moving left", "a blue circle moving left", "a green square moving right",
           "a yellow circle moving right", "a blue square moving up", "a red circle moving up",
           "a yellow square moving down", "a green circle moving down"]
SEED0 = 1000  # held-out sampling seeds (training and the demo use small seeds)


def world_overrides(num_train_clips: int, cache_dir: str) -> list[str]:
    """The ``configs/toy.yaml`` overrides of the long-clip world: 8 wrapped frames."""
    return ["--data.init_args.world.num_frames", str(TRAIN_FRAMES), "--data.init_args.world.wrap", "true",
            "--data.init_args.num_train_clips", str(num_train_clips), "--data.init_args.cache_dir", cache_dir]


def train_arm(name: str, args: argparse.Namespace) -> dict:
    """Train one arm (or reuse it); returns its checkpoint, steps and training speed."""
    from ls_video.checkpoint import load_checkpoint

    run = os.path.join(args.out, name)
    last = os.path.join(run, "checkpoints", "last.ckpt")
    if not (os.path.isfile(last) and load_checkpoint(last).get("global_step", 0) >= args.steps):
        cmd = [sys.executable, "-m", "ls_video.cli", "fit", "-c", args.train_config, "--trainer.max_steps",
               str(args.steps), "--trainer.default_root_dir", run, "--trainer.logger.init_args.save_dir", run,
               *world_overrides(args.num_train_clips, args.cache_dir), *ARMS[name], *args.overrides]
        print(f"[long] {name}: {' '.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, check=True)
    speed = {}
    for root, _, files in os.walk(run):
        if "speed.json" in files:
            with open(os.path.join(root, "speed.json")) as f:
                speed = json.load(f)
    return {"checkpoint": last, "steps": int(load_checkpoint(last)["global_step"]),
            "steps_per_s": speed.get("steps_per_s")}


def clip_scores(videos: list[np.ndarray], prompts: list[str]) -> dict:
    """The study's wrap-aware scores of ``(F, H, W, 3)`` uint8 clips."""
    from ls_video.metrics.toy import score, score_long, seam_ratio

    short, long = score(videos, prompts, wrap=True), score_long(videos, prompts, wrap=True)
    return {"direction": short["direction_acc"], "steps_right": short["step_acc"], "identity": long["identity"],
            "single": long["single"], "seam": float(np.median([seam_ratio(v) for v in videos]))}


def ground_truth(frames: int, n: int) -> dict:
    """Scores of ``n`` rendered validation clips of the wrapped world at ``frames`` frames (the ceiling)."""
    from ls_video.toy.world import ToyWorld

    world = ToyWorld(size=32, num_frames=TRAIN_FRAMES, object_size=8, max_speed=4, min_travel=0.6, wrap=True)
    clips = world.clips(n, "val", seed=SEED0)
    videos = [np.stack([world.render_frame(c, p) for p in world.positions(c, frames)]) for c in clips]
    return clip_scores(videos, [c.caption for c in clips])


def measure(checkpoint: str, frames: int, seeds: int, steps: int, guidance: float, device: str,
            prompts: list[str] | None = None) -> dict:
    """Sample one video at a time (``prompts`` x ``seeds``) at ``frames`` frames; score, time, memory."""
    from ls_video.checkpoint import load_checkpoint, pipeline_from_checkpoint

    pipe = pipeline_from_checkpoint(load_checkpoint(checkpoint), source=checkpoint).to(device)
    pipe.set_progress_bar_config(disable=True)
    pipe(PROMPTS[:1], num_frames=2, num_inference_steps=2)  # warm-up: the first call's set-up is not timed
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    prompts = [p for p in (prompts or PROMPTS) for _ in range(seeds)]
    videos, seconds = [], []
    for i, prompt in enumerate(prompts):
        start = time.perf_counter()
        out = pipe([prompt], num_frames=frames, num_inference_steps=steps, guidance_scale=guidance,
                   generator=torch.Generator().manual_seed(SEED0 + i % seeds)).frames[0]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        videos.append((np.clip(out, 0, 1) * 255).round().astype(np.uint8))
    row = clip_scores(videos, prompts)
    row.update(n=len(videos), seconds_per_video=statistics.median(seconds))
    if device.startswith("cuda"):
        row.update(peak_mib=torch.cuda.max_memory_allocated() / 2**20, memory="cuda max allocated")
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        row.update(peak_mib=peak, sampling_mib=peak - base_rss, memory="peak RSS")
    return row


def measure_in_child(checkpoint: str, frames: int, args: argparse.Namespace) -> dict:
    """:func:`measure` in its own process, so each row's peak memory is its own."""
    cmd = [sys.executable, "-m", "ls_video.toy.long_clips", "--measure", checkpoint, "--frames", str(frames),
           "--seeds", str(args.seeds), "--num-inference-steps", str(args.num_inference_steps),
           "--guidance-scale", str(args.guidance_scale), "--device", args.device]
    if args.prompts:
        cmd += ["--prompts", *args.prompts]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    lines = ["| model | frames | direction (whole clip) | steps right | identity held | single object | "
             "seam ratio | s / video | peak MiB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = f"{r['seconds_per_video']:.2f}" if "seconds_per_video" in r else "-"
        m = f"{r['peak_mib']:.0f}" if "peak_mib" in r else "-"
        lines.append(f"| {r['model']} | {r['frames']} | {r['direction']:.2f} | {r['steps_right']:.2f} | "
                     f"{r['identity']:.2f} | {r['single']:.2f} | {r['seam']:.2f} | {t} | {m} |")
    return "\n".join(lines)


@command("python -m ls_video.toy.long_clips")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ls_video.toy.long_clips", description=__doc__.split("\n")[0],
                                allow_abbrev=False)  # no prefix guessing: unknown options go to train.py
    p.add_argument("--out", default="outputs/long", help="run folder of both arms")
    p.add_argument("--train-config", default="configs/toy.yaml", help="the recipe both arms train with")
    p.add_argument("--steps", type=int, default=700, help="training steps per arm")
    p.add_argument("--num-train-clips", type=int, default=2000, help="training clips of the wrapped world")
    p.add_argument("--cache-dir", default=".cache/long", help="latent cache of the wrapped world")
    p.add_argument("--frames", type=int, nargs="+", default=[8, 16, 32, 64], help="sampled lengths")
    p.add_argument("--seeds", type=int, default=1, help="videos per toy prompt (seeds from 1000)")
    p.add_argument("--prompts", nargs="+", help="toy prompts (default: 8, two per direction)")
    p.add_argument("--json", help="where the rows go (default: OUT/long.json)")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS), help="models to train and sample")
    p.add_argument("--num-inference-steps", type=int, default=25, help="DDIM steps")
    p.add_argument("--guidance-scale", type=float, default=4.0, help="classifier-free guidance")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where to sample")
    p.add_argument("--measure", metavar="CKPT", help=argparse.SUPPRESS)  # the per-row child process
    args, extra = p.parse_known_args(argv)
    bad = [a for a in extra if a.startswith("-") and not a.startswith(("--trainer.", "--model.", "--data."))]
    if bad or (extra and not extra[0].startswith("--")):
        raise UsageError(f"unknown arguments {bad or extra[:1]} (train.py overrides start with --trainer., "
                         "--model. or --data.)")
    args.overrides = extra
    if any(f < 2 for f in args.frames):
        raise UsageError(f"--frames must be >= 2 (a clip has a direction and a seam), got {args.frames}")
    if args.measure:
        row = measure(args.measure, args.frames[0], args.seeds, args.num_inference_steps, args.guidance_scale,
                      args.device, args.prompts)
        print(json.dumps(row))
        return 0
    runs = {name: train_arm(name, args) for name in args.arms}
    rows = []
    n = len(args.prompts or PROMPTS) * args.seeds
    for frames in args.frames:
        rows.append({"model": "ground truth", "frames": frames, **ground_truth(frames, n)})
        for name, run in runs.items():
            row = {"model": name, "frames": frames, **measure_in_child(run["checkpoint"], frames, args)}
            rows.append(row)
            print(f"[long] {name} {frames} frames: {json.dumps(row)}", flush=True)
    print(table(rows))
    with open(args.json or os.path.join(args.out, "long.json"), "w") as f:
        json.dump({"runs": runs, "rows": rows, "args": {k: v for k, v in vars(args).items() if k != "measure"}},
                  f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
