"""Export a training checkpoint as a diffusers folder that ``sample.py`` and
``LatentShiftPipeline.from_pretrained`` load.

    ls-video export CKPT OUT [--raw] [--base PATH] [--single-file FILE] [--adapter-only]

OUT gets the base's ``vae/``, ``text_encoder/``, ``tokenizer/``, a DDIM ``scheduler/``, the trained
``unet/`` (EMA weights when the checkpoint has them, unless ``--raw``: :func:`ls_video.checkpoint.uses_ema`, the rule
``sample`` and ``curve`` follow too) plus ``unet/latent_shift.json``, the noise schedule the run trained with
(``scheduler/``: the base's with the objective's ``prediction_type``), and
a model card ``README.md`` with Hub metadata (:mod:`ls_video.model_card`); ``--single-file FILE`` also writes
the U-Net in the original Stable Diffusion key layout (:mod:`ls_video.single_file`). A LoRA run's adapter is
folded into the U-Net (a plain diffusers folder, zero added parameters), or with ``--adapter-only`` written alone
in diffusers/PEFT and Kohya formats (:func:`ls_video.lora.save_adapter`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from ls_video.checkpoint import load_checkpoint, pipeline_from_checkpoint, uses_ema
from ls_video.errors import UsageError, command
from ls_video.lora import save_adapter, settings_from_hparams
from ls_video.model_card import write_model_card
from ls_video.single_file import save_unet_single_file
from ls_video.unet import TemporalConfig


def export(ckpt: str, out: str, ema: bool | None = None, base: str | None = None, single_file: str | None = None,
           adapter_only: bool = False) -> bool:
    """Write the folder (and, with ``single_file``, the U-Net as one original-layout safetensors file; with
    ``adapter_only``, a LoRA run's adapter alone); returns whether EMA weights were used (default: when present)."""
    checkpoint = load_checkpoint(ckpt)  # once: the pipeline, the card and the single file read it
    ema = uses_ema(checkpoint, ema)
    if adapter_only:
        lora = settings_from_hparams(checkpoint.get("hyper_parameters", {}))
        if not lora.enabled:
            raise UsageError(f"--adapter-only needs a LoRA checkpoint (model.lora.rank > 0); {ckpt} trained the "
                             "U-Net's weights")
        pipe = pipeline_from_checkpoint(checkpoint, ema=ema, base=base, merge=False, source=ckpt)
        sizes = save_adapter(pipe.unet, lora, out)
        print(f"wrote the rank-{lora.rank} adapter to {out}: " + ", ".join(f"{k} ({v / 1e6:.2f} MB)"
                                                                      for k, v in sizes.items()))
        return ema
    pipe = pipeline_from_checkpoint(checkpoint, ema=ema, base=base, source=ckpt)
    pipe.save_pretrained(out)  # (scheduler/: the noise schedule and prediction type the run trained with)
    write_model_card(out, ckpt, checkpoint=checkpoint, ema=ema)
    if single_file:
        temporal = TemporalConfig.load(os.path.join(out, "unet"))
        if temporal is not None and temporal.temporal_mixing not in ("shift", "none"):
            raise UsageError(f"--single-file holds the SD layout only; {temporal.temporal_mixing} adds layers it has "
                             "no names for (export the folder instead)")
        meta = {"latent_shift": dataclasses.asdict(temporal) if temporal else None, "ema": ema,
                "base_model": checkpoint.get("hyper_parameters", {}).get("pretrained_model_name_or_path")}
        n = save_unet_single_file(pipe.unet, single_file, meta)
        print(f"wrote {single_file}: the U-Net's {n} tensors in the original Stable Diffusion layout")
    return ema


@command("ls-video export")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ls-video export", description=__doc__.split("\n")[0])
    p.add_argument("ckpt", help="Lightning checkpoint (.ckpt) written by train.py")
    p.add_argument("out", help="output diffusers folder")
    p.add_argument("--raw", action="store_true", help="export the raw weights even when EMA weights exist")
    p.add_argument("--base", default=None, help="base model folder/id (default: the one recorded in the ckpt)")
    p.add_argument("--single-file", default=None, metavar="FILE.safetensors",
                   help="also write the U-Net as one safetensors file in the original Stable Diffusion key layout "
                        "(A1111 / ComfyUI; the shift settings in its metadata under 'latent_shift')")
    p.add_argument("--adapter-only", action="store_true",
                   help="LoRA checkpoints: write only the adapter (pytorch_lora_weights.safetensors for "
                        "pipe.load_lora_weights, lora_kohya.safetensors for A1111/ComfyUI, latent_shift.json) "
                        "instead of a merged diffusers folder")
    args = p.parse_args(argv)
    used_ema = export(args.ckpt, args.out, ema=False if args.raw else None, base=args.base,
                      single_file=args.single_file, adapter_only=args.adapter_only)
    print(f"exported {'EMA' if used_ema else 'raw'} weights to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
