"""A small video feature network trained on toy clips, for a toy-world FVD (toy-only: its numbers
are not comparable with published FVD, which uses I3D features).

    python -m ls_video.metrics.toy_net --out DIR [--max-steps 400] [--size 32] [--num-frames 6]

A 3D-convolutional classifier of (direction, colour, shape) trained on freshly rendered toy clips;
the 64-d features before its heads are what the FVD compares. Saved as ``DIR/config.json`` +
``DIR/model.safetensors`` (no pickle).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from ls_video.errors import command
from ls_video.toy.world import COLORS, DIRECTIONS, SHAPES, ToyWorld


class ToyVideoNet(nn.Module):
    """``(B, F, H, W, 3)`` uint8 videos -> ``(B, 64)`` features (and class logits for training)."""

    def __init__(self, width: int = 16, dim: int = 64) -> None:
        super().__init__()
        self.config = dict(width=width, dim=dim)
        w = width
        self.body = nn.Sequential(
            nn.Conv3d(3, w, (3, 3, 3), padding=1), nn.SiLU(), nn.MaxPool3d((1, 2, 2)),
            nn.Conv3d(w, 2 * w, (3, 3, 3), padding=1), nn.SiLU(), nn.MaxPool3d((1, 2, 2)),
            nn.Conv3d(2 * w, 2 * w, (3, 3, 3), padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(2 * w, dim), nn.SiLU(),
        )
        self.heads = nn.ModuleDict(dict(direction=nn.Linear(dim, len(DIRECTIONS)), color=nn.Linear(dim, len(COLORS)),
                                        shape=nn.Linear(dim, len(SHAPES))))

    def features(self, videos: torch.Tensor) -> torch.Tensor:
        x = videos.float().div(127.5).sub(1).permute(0, 4, 1, 2, 3)  # (B, 3, F, H, W) in [-1, 1]
        return self.body(x)

    def forward(self, videos: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(videos)
        return {k: head(f) for k, head in self.heads.items()}

    def save(self, out: str) -> None:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump({"model_type": "ls_video_toy_net", **self.config}, f, indent=2)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, os.path.join(out, "model.safetensors"))

    @classmethod
    def load(cls, path: str) -> ToyVideoNet:
        with open(os.path.join(path, "config.json")) as f:
            config = json.load(f)
        net = cls(config["width"], config["dim"])
        net.load_state_dict(load_file(os.path.join(path, "model.safetensors")))
        return net.eval()


def toy_batch(world: ToyWorld, rng: np.random.Generator, n: int, split: str = "train"):
    clips = [world.sample_clip(rng, split) for _ in range(n)]
    videos = torch.from_numpy(np.stack([world.render(c) for c in clips]))
    labels = {"direction": [list(DIRECTIONS).index(c.direction) for c in clips],
              "color": [list(COLORS).index(c.color) for c in clips], "shape": [SHAPES.index(c.shape) for c in clips]}
    return videos, {k: torch.tensor(v) for k, v in labels.items()}


def train_toy_net(out: str, steps: int = 400, size: int = 32, frames: int = 6, object_size: int = 8,
                  seed: int = 0) -> dict:
    """Train and save; returns the held-out accuracy per head."""
    torch.manual_seed(seed)
    world = ToyWorld(size=size, num_frames=frames, object_size=object_size)
    rng = np.random.default_rng(seed)
    net = ToyVideoNet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    for _ in tqdm(range(steps), desc="toy feature net", unit="step"):
        videos, labels = toy_batch(world, rng, 32)
        logits = net(videos)
        loss = sum(nn.functional.cross_entropy(logits[k], labels[k]) for k in labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        videos, labels = toy_batch(world, np.random.default_rng(seed + 1), 256, "val")
        logits = net(videos)
        acc = {k: float((logits[k].argmax(-1) == labels[k]).float().mean()) for k in labels}
    net.save(out)
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    config.update(trained_on=dict(size=size, frames=frames, object_size=object_size, steps=steps), val_accuracy=acc)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return acc


@command("python -m ls_video.metrics.toy_net")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ls_video.metrics.toy_net", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max-steps", type=int, default=400, help="training steps (batches of 32 clips)")
    p.add_argument("--size", type=int, default=32, help="frame size in pixels")
    p.add_argument("--num-frames", type=int, default=6, help="frames per clip")
    p.add_argument("--object-size", type=int, default=8, help="object size in pixels")
    args = p.parse_args(argv)
    acc = train_toy_net(args.out, args.max_steps, args.size, args.num_frames, args.object_size)
    print("held-out accuracy: " + ", ".join(f"{k} {v:.2f}" for k, v in acc.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
