"""Toy training step (configs/toy.yaml sizes: 16 clips x 6 frames of 8x8x4 latents) at several CPU thread counts.

    python benchmarks/toy_threads.py [--threads 2,1] [--rounds 2] [--steps 40]

Alternates the thread counts round by round (a shared machine drifts) and prints steps/s for each: text
encoding, the shifted U-Net forward and backward, AdamW, without Lightning's loop.
"""

from __future__ import annotations

import argparse
import time

import torch

from ls_video.module import LatentShiftModule
from ls_video.objective import ObjectiveConfig
from ls_video.optim import OptimConfig
from ls_video.unet import TemporalConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", default="2,1", help="comma-separated thread counts")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=40, help="timed steps per round and thread count")
    p.add_argument("--base", default="assets/toy-base")
    args = p.parse_args()
    m = LatentShiftModule(args.base, temporal=TemporalConfig(shift_fraction=0.25),
                          objective=ObjectiveConfig(x0_weight_cap=100), optim=OptimConfig(learning_rate=1e-3))
    opt = torch.optim.AdamW([q for q in m.unet.parameters() if q.requires_grad], lr=1e-3)
    latents, captions = torch.randn(16, 6, 4, 8, 8), ["a red square moving left"] * 16

    def step() -> None:
        loss = m.diffusion_loss(latents, m.encode_text(captions))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for r in range(args.rounds):
        for n in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(n)
            for _ in range(3):
                step()
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            print(f"round {r} threads={n}: {args.steps / (time.perf_counter() - start):.2f} steps/s", flush=True)


if __name__ == "__main__":
    main()
