"""Export a training checkpoint as a diffusers folder that ``sample.py`` and
``LatentShiftPipeline.from_pretrained`` load.

    ls-video export CKPT OUT [--raw] [--base PATH]        (or: python -m ls_video.export ...)

OUT gets the base's ``vae/``, ``text_encoder/``, ``tokenizer/``, a DDIM ``scheduler/``, the trained
``unet/`` (EMA weights when the checkpoint has them, unless ``--raw``) plus ``unet/latent_shift.json``, and
a model card ``README.md`` with Hub metadata (:mod:`ls_video.model_card`).
"""

from __future__ import annotations

import argparse
import sys

from ls_video.checkpoint import find_ema_state, load_checkpoint, pipeline_from_checkpoint
from ls_video.errors import command
from ls_video.model_card import write_model_card


def export(ckpt: str, out: str, ema: bool | None = None, base: str | None = None) -> bool:
    """Write the folder; returns whether EMA weights were used (default: when present)."""
    if ema is None:
        ema = find_ema_state(load_checkpoint(ckpt)) is not None
    pipe = pipeline_from_checkpoint(ckpt, ema=ema, base=base)
    pipe.save_pretrained(out)
    write_model_card(out, ckpt)
    return ema


@command("ls-video export")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ls-video export", description=__doc__.split("\n")[0])
    p.add_argument("ckpt", help="Lightning checkpoint (.ckpt) written by train.py")
    p.add_argument("out", help="output diffusers folder")
    p.add_argument("--raw", action="store_true", help="export the raw weights even when EMA weights exist")
    p.add_argument("--base", default=None, help="base model folder/id (default: the one recorded in the ckpt)")
    args = p.parse_args(argv)
    used_ema = export(args.ckpt, args.out, ema=False if args.raw else None, base=args.base)
    print(f"exported {'EMA' if used_ema else 'raw'} weights to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
