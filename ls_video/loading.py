"""Load Stable-Diffusion-layout components from a diffusers folder or hub id, one per subfolder."""

from __future__ import annotations

import hashlib
import json
import os

import torch
import transformers
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import AutoTokenizer, PreTrainedModel

from ls_video.unet import TemporalConfig


def _text_encoder_class(path: str) -> type[PreTrainedModel]:
    """The class named in ``model_index.json`` (e.g. ``CLIPTextModel``), else ``AutoModel``."""
    index = os.path.join(path, "model_index.json")
    if os.path.isfile(index):
        with open(index) as f:
            library, name = json.load(f).get("text_encoder", [None, None])
        if library == "transformers" and hasattr(transformers, name or ""):
            return getattr(transformers, name)
    return transformers.AutoModel


def check_base_path(path: str) -> None:
    """Fail early with a one-line message when a local base folder is missing or incomplete."""
    looks_local = os.path.sep in path or path.startswith(".") or os.path.exists(path)
    if looks_local and not os.path.isdir(path):
        raise FileNotFoundError(f"base model folder not found: {path}")
    if os.path.isdir(path):
        missing = [d for d in ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
                   if not os.path.isdir(os.path.join(path, d))]
        if missing:
            raise FileNotFoundError(f"{path} is not a Stable-Diffusion-layout folder; missing {missing}")


def load_components(path: str, revision: str | None = None) -> dict:
    """``vae``, ``text_encoder``, ``tokenizer``, ``unet``, ``noise_scheduler`` and the U-Net's saved
    ``temporal_config`` (``None`` for a plain SD U-Net), loaded exactly like diffusers does."""
    check_base_path(path)
    kw = dict(revision=revision)
    return dict(
        vae=AutoencoderKL.from_pretrained(path, subfolder="vae", **kw),
        text_encoder=_text_encoder_class(path).from_pretrained(path, subfolder="text_encoder", **kw),
        tokenizer=AutoTokenizer.from_pretrained(path, subfolder="tokenizer", **kw),
        unet=UNet2DConditionModel.from_pretrained(path, subfolder="unet", **kw),
        noise_scheduler=DDPMScheduler.from_pretrained(path, subfolder="scheduler", **kw),
        temporal_config=TemporalConfig.load(os.path.join(path, "unet")) if os.path.isdir(path) else None,
    )


def vae_fingerprint(vae: AutoencoderKL) -> str:
    """16 hex digits naming a VAE by its config and weights (bf16-rounded, so a cast VAE keeps its name).

    Latent shards record the fingerprint of the VAE that made them; training compares it with the
    model's VAE before the first step.
    """
    config = {k: v for k, v in vae.config.items() if not k.startswith("_")}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for p in vae.parameters():
        digest.update(p.detach().to("cpu", torch.bfloat16).float().numpy().tobytes())
    return digest.hexdigest()[:16]
