"""Read Lightning checkpoints safely (``weights_only=True``) and turn them into pipelines."""

from __future__ import annotations

import os
import sys
from typing import Any

import torch

from ls_video.components import (
    build_pipeline,
    load_components,
    temporal_config_from_hparams,
)
from ls_video.errors import UsageError
from ls_video.lora import merge_lora, settings_from_hparams
from ls_video.objective import DiffusionObjective, ObjectiveConfig
from ls_video.pipeline import LatentShiftPipeline
from ls_video.video_unet import load_video_unet

EMA_KEY = "ema_unet"  # checkpoint entry with the EMA weights (U-Net parameter names), written by ls_video.callbacks.EMA


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


def uses_ema(checkpoint: dict[str, Any], ema: bool | None = None) -> bool:
    """The one rule every command (``sample``, ``export``, ``curve``, the ablation) follows: the EMA weights when
    the checkpoint holds them (``ema=None``), the raw ones with ``ema=False`` (``--raw``); ``ema=True`` (``--ema``)
    insists on EMA weights."""
    if ema and find_ema_state(checkpoint) is None:
        raise UsageError("--ema was asked for but the checkpoint holds no EMA state")
    return find_ema_state(checkpoint) is not None if ema is None else ema


def ema_decay(checkpoint: dict[str, Any]) -> float | None:
    """The decay the run's ``ls_video.callbacks.EMA`` averaged with (its saved state), if recorded."""
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if str(key).startswith("EMA") and isinstance(state, dict) and "decay" in state:
            return float(state["decay"])
    return None


def weights_note(checkpoint: dict[str, Any], ema: bool, source: str | os.PathLike | None = None) -> str:
    """One line saying which weights :func:`uses_ema` chose, e.g. ``using EMA weights (decay 0.999) from x.ckpt``."""
    where = f" from {source}" if source is not None else ""
    if ema:
        decay = ema_decay(checkpoint)
        return f"using EMA weights{f' (decay {decay:g})' if decay is not None else ''}{where}"
    why = " (--raw)" if find_ema_state(checkpoint) is not None else " (the checkpoint holds no EMA weights)"
    return f"using raw weights{where}{why}"


def unet_state_from_checkpoint(checkpoint: dict[str, Any], ema: bool | None = None) -> dict[str, torch.Tensor]:
    """Trainable U-Net tensors from a checkpoint, the weights :func:`uses_ema` chooses."""
    if uses_ema(checkpoint, ema):
        return find_ema_state(checkpoint)
    prefix = "unet."
    return {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}


def trained_scheduler(scheduler: Any, hparams: dict[str, Any]) -> Any:
    """The noise scheduler the run trained with: the base's, with what its objective set (prediction type, ...;
    :meth:`~ls_video.objective.ObjectiveConfig.scheduler_overrides`), built as the module builds it."""
    return DiffusionObjective(scheduler, ObjectiveConfig(**(hparams.get("objective") or {}))).scheduler


def pipeline_from_checkpoint(path: str | os.PathLike | dict[str, Any], ema: bool | None = None,
                             base: str | None = None, merge: bool = True, source: str | None = None,
                             quiet: bool = False) -> LatentShiftPipeline:
    """Rebuild the sampling pipeline of a training checkpoint (a path, or one already loaded with
    :func:`load_checkpoint`): base components + trained U-Net (the weights :func:`uses_ema` chooses, said on
    stderr unless ``quiet``) + the noise scheduler it trained with (:func:`trained_scheduler`). A LoRA run's adapter
    is folded into the U-Net's weights (``merge``) or kept as a PEFT adapter on it. ``pipe.ema_weights`` records
    which weights were used."""
    checkpoint = path if isinstance(path, dict) else load_checkpoint(path)
    source = source if source is not None else (None if isinstance(path, dict) else str(path))
    hparams = checkpoint.get("hyper_parameters", {})
    recorded = base is None  # (the recorded base's revision and variant apply to it only)
    base = base or hparams.get("pretrained_model_name_or_path")
    if base is None:
        raise UsageError("the checkpoint does not name its base model; pass it explicitly (--base)")
    parts = load_components(base, hparams.get("revision") if recorded else None,
                            variant=hparams.get("variant") if recorded else None)
    parts["noise_scheduler"] = trained_scheduler(parts["noise_scheduler"], hparams)
    ema = uses_ema(checkpoint, ema)
    state = unet_state_from_checkpoint(checkpoint, ema)
    if not quiet:
        print(weights_note(checkpoint, ema, source), file=sys.stderr, flush=True)
    lora = settings_from_hparams(hparams)
    load_video_unet(parts["unet"], temporal_config_from_hparams(hparams), state=state, lora=lora)
    if merge:
        merge_lora(parts["unet"])
    pipe = build_pipeline(parts)
    pipe.ema_weights = ema
    return pipe


def load_pipeline(model: str | os.PathLike, ema: bool | None = None) -> LatentShiftPipeline:
    """A pipeline from a diffusers folder (SD layout or exported, local or a Hub id) or a Lightning ``.ckpt``
    (``ema`` as in :func:`uses_ema`)."""
    model = str(model)
    if model.endswith(".ckpt"):
        return pipeline_from_checkpoint(model, ema=ema)
    if os.path.exists(model) and not os.path.isdir(model):
        raise UsageError(f"--model must be a diffusers folder or a .ckpt file, got {model}")
    return LatentShiftPipeline.from_pretrained(model)
