"""``ls-video toy-videos``: a folder of toy-world clips laid out as your own videos would be.

    ls-video toy-videos --out my_videos [--num 64] [--split train] [--seed 0] [--config toy]

The clips come from the toy world of a training config (``configs/toy.yaml`` by default: 32x32, 6 frames), so
the shards made from them match what that config trains. Each clip is ``NAME.mp4`` with its caption in
``NAME.txt`` (and the ground truth in ``NAME.json``), the folder layout ``ls-video preprocess --videos``
reads: a stand-in for real footage in the README's "your own videos" walk-through and in its test.
"""

from __future__ import annotations

import argparse

import yaml

from ls_video.errors import UsageError, command
from ls_video.shipped import shipped_path
from ls_video.toy.world import SPLITS, ToyWorld


def world_of(config: str) -> ToyWorld:
    """The ``data.init_args.world`` of a training config (a path or a shipped config's name)."""
    with open(shipped_path(config)) as f:
        data = (yaml.safe_load(f) or {}).get("data") or {}
    return ToyWorld(**(data.get("init_args") or {}).get("world", {}))


@command("ls-video toy-videos")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ls-video toy-videos", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder to write NAME.mp4 + NAME.txt pairs into")
    p.add_argument("--num", type=int, default=64, help="number of clips (default 64)")
    p.add_argument("--split", default="train", choices=SPLITS, help="toy-world split the clips come from")
    p.add_argument("--seed", type=int, default=0, help="seed of the clips (default 0)")
    p.add_argument("--config", default="configs/toy.yaml", help="training config whose toy world to render")
    args = p.parse_args(argv)
    if args.num < 1:
        raise UsageError(f"--num must be >= 1, got {args.num}")
    world = world_of(args.config)
    paths = world.write_videos(args.out, args.num, args.split, args.seed)
    print(f"{len(paths)} clips ({world.num_frames} frames, {world.size}x{world.size}) with captions in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
