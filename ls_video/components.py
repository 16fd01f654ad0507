"""The parts of a Stable-Diffusion-layout model, loaded and put together in one place.

* :class:`Parts`: the five parts by the names every caller uses (the scheduler is ``noise_scheduler``).
* :func:`load_components` / :func:`load_vae`: a diffusers folder or Hub id (:func:`ls_video.hub.resolve`: one
  rule for which is which), one part per subfolder; :func:`load_unet`: the U-Net of a pipeline or U-Net folder
  (plain diffusers parts).
* :func:`build_pipeline`: a :class:`~ls_video.pipeline.LatentShiftPipeline` from parts (DDIM sampler);
  :func:`save_sd_folder`: parts saved as a Stable Diffusion 1.x folder.
* :func:`temporal_config_from_hparams`: the temporal settings a training checkpoint recorded.
* :func:`vae_fingerprint`: the name latent shards give the VAE that made them.

Every caller (training, export, checkpoints, preprocessing, motion transfer, the toy recipes) uses these.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any, TypedDict

import torch
import transformers
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ls_video.errors import UsageError
from ls_video.hub import resolve
from ls_video.pipeline import LatentShiftPipeline
from ls_video.unet import TemporalConfig

SUBFOLDERS = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")  # of a Stable-Diffusion-layout folder


class Parts(TypedDict):
    """The parts of a Stable-Diffusion-layout model. ``noise_scheduler`` is the training noise schedule
    (saved as ``scheduler/``); samplers are made from its config."""

    vae: AutoencoderKL
    text_encoder: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    unet: UNet2DConditionModel
    noise_scheduler: SchedulerMixin


PART_NAMES = tuple(Parts.__annotations__)


def check_parts(parts: Mapping[str, Any], complete: bool = True) -> None:
    """Refuse names that are not :class:`Parts` keys, and (``complete``) missing ones."""
    unknown = sorted(set(parts) - set(PART_NAMES))
    if unknown:
        raise UsageError(f"unknown parts {unknown}; expected {list(PART_NAMES)}")
    missing = [k for k in PART_NAMES if k not in parts]
    if complete and missing:
        raise UsageError(f"missing parts {missing}")


def check_base_path(path: str, revision: str | None = None, variant: str | None = None) -> str:
    """The local folder of a base (a folder, or a Hub id resolved by :func:`ls_video.hub.resolve`); a missing
    local folder, an unresolvable Hub id or an incomplete folder each end in a one-line error."""
    local = resolve(path, revision, variant, what="base model")
    if not os.path.isdir(local):
        raise FileNotFoundError(f"base model folder not found: {path}")
    missing = [d for d in SUBFOLDERS if not os.path.isdir(os.path.join(local, d))]
    if missing:
        raise FileNotFoundError(f"{path} is not a Stable-Diffusion-layout folder; missing {missing}")
    return local


def text_encoder_class(path: str) -> type[PreTrainedModel]:
    """The class named in ``model_index.json`` (e.g. ``CLIPTextModel``), else ``AutoModel``."""
    index = os.path.join(path, "model_index.json")
    if os.path.isfile(index):
        with open(index) as f:
            library, name = json.load(f).get("text_encoder", [None, None])
        if library == "transformers" and hasattr(transformers, name or ""):
            return getattr(transformers, name)
    return transformers.AutoModel


def freeze(*modules: torch.nn.Module) -> None:
    """Inference mode for parts that never train: no gradients, eval behaviour (``None``: a part left out)."""
    for module in (m for m in modules if m is not None):
        module.requires_grad_(False)
        module.eval()


def load_vae(path: str, revision: str | None = None, variant: str | None = None) -> AutoencoderKL:
    """The frozen VAE of a base (its ``vae/``), or of a VAE folder given directly (a folder or a Hub id)."""
    local = resolve(path, revision, variant, what="VAE")
    if not os.path.isdir(local):
        raise FileNotFoundError(f"VAE folder not found: {path}")
    own_folder = os.path.isfile(os.path.join(local, "config.json"))
    vae = AutoencoderKL.from_pretrained(local, subfolder=None if own_folder else "vae", variant=variant)
    freeze(vae)
    return vae


def load_components(path: str | None, revision: str | None = None, given: Mapping[str, Any] | None = None,
                    variant: str | None = None) -> Parts:
    """The base's parts (a folder or a Hub id at ``revision``, weights of ``variant``), loaded exactly like
    diffusers does (a plain image U-Net). Parts ``given`` replace the base's and are not loaded (``None`` leaves a
    part out, e.g. the text encoder when training from cached text embeddings); with all five given, no base is
    needed."""
    given = dict(given or {})
    check_parts(given, complete=False)
    missing = [k for k in PART_NAMES if k not in given]
    if not missing:
        return Parts(**given)
    if path is None:
        raise UsageError(f"pass pretrained_model_name_or_path or every component (missing {missing})")
    local = check_base_path(path, revision, variant)
    loaders = dict(
        vae=lambda: load_vae(local, variant=variant),
        text_encoder=lambda: load_text_encoder(local, variant=variant),
        tokenizer=lambda: AutoTokenizer.from_pretrained(local, subfolder="tokenizer"),
        unet=lambda: UNet2DConditionModel.from_pretrained(local, subfolder="unet", variant=variant),
        noise_scheduler=lambda: DDPMScheduler.from_pretrained(local, subfolder="scheduler"),
    )
    return Parts(**{k: given[k] if k in given else loaders[k]() for k in PART_NAMES})  # only the missing ones load


def load_text_encoder(path: str, revision: str | None = None, variant: str | None = None) -> PreTrainedModel:
    """The frozen text encoder of a base (a folder or a Hub id; its ``text_encoder/``, the class
    ``model_index.json`` names)."""
    local = resolve(path, revision, variant, what="base model")
    encoder = text_encoder_class(local).from_pretrained(local, subfolder="text_encoder", variant=variant)
    freeze(encoder)
    return encoder


def unet_folder(path: str | os.PathLike) -> str:
    """The U-Net folder of a pipeline folder (its ``unet/``) or of a U-Net folder (itself)."""
    path = str(path)
    return os.path.join(path, "unet") if os.path.isdir(os.path.join(path, "unet")) else path


def load_unet(path: str, revision: str | None = None) -> UNet2DConditionModel:
    """The plain (image) U-Net of a pipeline folder or U-Net folder (local or a Hub id), in float32."""
    local = resolve(path, revision, what="model")
    if not os.path.isdir(local):
        raise FileNotFoundError(f"model folder not found: {path}")
    return UNet2DConditionModel.from_pretrained(unet_folder(local)).float()


def sampler(parts: Parts) -> DDIMScheduler:
    """The DDIM sampler of these parts (from the noise scheduler's config)."""
    return DDIMScheduler.from_config(parts["noise_scheduler"].config)


def build_pipeline(parts: Parts) -> LatentShiftPipeline:
    """A sampling pipeline over these parts (shared, not copied) with their DDIM :func:`sampler`. The U-Net
    keeps whatever temporal mixing it carries."""
    check_parts(parts)
    return LatentShiftPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
                               unet=parts["unet"], scheduler=sampler(parts))


def save_sd_folder(out: str | os.PathLike, parts: Parts) -> str:
    """Save ``parts`` as a Stable Diffusion 1.x folder (``StableDiffusionPipeline`` layout; the noise
    scheduler's config as a DDIM ``scheduler/``)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"], unet=parts["unet"],
        scheduler=sampler(parts), safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.save_pretrained(out)
    return str(out)


def temporal_config_from_hparams(hparams: dict) -> TemporalConfig:
    """The U-Net's temporal settings recorded in a checkpoint's hyper-parameters (the ``temporal`` group)."""
    return TemporalConfig(**hparams["temporal"])


VOLATILE_CONFIG = ("transformers_version", "torch_dtype", "dtype", "_name_or_path")  # not part of a model's identity


def fingerprint(model: torch.nn.Module) -> str:
    """16 hex digits naming a model by its config and weights (bf16-rounded, so a cast model keeps its name).

    Latent shards record the fingerprint of the VAE (and, with cached text embeddings, of the text encoder) that
    made them; training compares it with the model's before the first step.
    """
    config = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(model.config.items())
    config = {k: v for k, v in config.items() if not k.startswith("_") and k not in VOLATILE_CONFIG}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for p in model.parameters():
        digest.update(p.detach().to("cpu", torch.bfloat16).float().numpy().tobytes())
    return digest.hexdigest()[:16]


vae_fingerprint = fingerprint  # the name latent shards' ``vae_fingerprint`` field was made with
