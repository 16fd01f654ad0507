"""Read Lightning checkpoints safely (``weights_only=True``) and turn them into pipelines."""

from __future__ import annotations

import os
from typing import Any

import torch

from ls_video.components import (
    build_pipeline,
    load_components,
    load_video_unet,
    temporal_config_from_hparams,
)
from ls_video.errors import UsageError
from ls_video.lora import merge_lora, settings_from_hparams
from ls_video.pipeline import LatentShiftPipeline

EMA_KEY = "ema_unet"  # checkpoint entry with the EMA weights (U-Net parameter names), written by callbacks.EMA


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a ``.ckpt`` without unpickling arbitrary objects."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure here means an unreadable/unsafe file
        raise UsageError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err})") from None


def find_ema_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The EMA weights (U-Net parameter names), if the run used EMA."""
    return checkpoint.get(EMA_KEY) or None


def uses_ema(checkpoint: dict[str, Any], ema: bool | None) -> bool:
    """Whether the EMA weights are read: as asked, or (``ema=None``) when the checkpoint holds them."""
    return find_ema_state(checkpoint) is not None if ema is None else ema


def unet_state_from_checkpoint(checkpoint: dict[str, Any], ema: bool | None = False) -> dict[str, torch.Tensor]:
    """Trainable U-Net tensors from a checkpoint: the raw weights, the EMA ones with ``ema``, or with ``None``
    the EMA ones when present (:func:`uses_ema`)."""
    if uses_ema(checkpoint, ema):
        shadow = find_ema_state(checkpoint)
        if shadow is None:
            raise UsageError("--ema was asked for but the checkpoint holds no EMA state")
        return shadow
    prefix = "unet."
    return {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}


def pipeline_from_checkpoint(path: str | os.PathLike | dict[str, Any], ema: bool | None = False,
                             base: str | None = None, merge: bool = True) -> LatentShiftPipeline:
    """Rebuild the sampling pipeline of a training checkpoint (a path, or one already loaded with
    :func:`load_checkpoint`): base components + trained U-Net (``ema`` as in :func:`unet_state_from_checkpoint`).
    A LoRA run's adapter is folded into the U-Net's weights (``merge``) or kept as a PEFT adapter on it."""
    checkpoint = path if isinstance(path, dict) else load_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters", {})
    base = base or hparams.get("pretrained_model_name_or_path")
    if base is None:
        raise UsageError("the checkpoint does not name its base model; pass it explicitly (--base)")
    parts = load_components(base)
    state = unet_state_from_checkpoint(checkpoint, ema)
    lora = settings_from_hparams(hparams)
    load_video_unet(parts["unet"], temporal_config_from_hparams(hparams), state=state, lora=lora)
    if merge:
        merge_lora(parts["unet"])
    return build_pipeline(parts)


def load_pipeline(model: str | os.PathLike, ema: bool | None = None) -> LatentShiftPipeline:
    """A pipeline from a diffusers folder (SD layout or exported, local or a Hub id) or a Lightning ``.ckpt``
    (``ema`` as in :func:`uses_ema`)."""
    model = str(model)
    if model.endswith(".ckpt"):
        return pipeline_from_checkpoint(model, ema=ema)
    if os.path.exists(model) and not os.path.isdir(model):
        raise UsageError(f"--model must be a diffusers folder or a .ckpt file, got {model}")
    return LatentShiftPipeline.from_pretrained(model)
