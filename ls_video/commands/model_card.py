"""Rewrite the model card of an exported folder (``ls_video.model_card``), e.g. once its samples are scored.

    python -m ls_video.commands.model_card OUT --ckpt CKPT [--metrics metrics.json] [--samples DIR]
"""

from __future__ import annotations

import argparse
import sys

from ls_video.errors import command
from ls_video.model_card import write_model_card


@command("python -m ls_video.commands.model_card")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ls_video.commands.model_card", description=__doc__.split("\n")[0])
    p.add_argument("out", help="exported folder")
    p.add_argument("--ckpt", required=True, help="the training checkpoint it was exported from")
    p.add_argument("--metrics", default=None, help="metrics.json (default: in or beside the folder)")
    p.add_argument("--samples", default=None, help="folder of sample mp4s (default: beside the folder)")
    args = p.parse_args(argv)
    print(f"wrote {write_model_card(args.out, args.ckpt, args.metrics, args.samples)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
