"""LoRA on a video U-Net: PEFT adapters the way diffusers trains them (``unet.add_adapter(LoraConfig(...))``).

The shift moves channels right before every ResNet block's ``conv1``, so an adapter that should learn motion
the way Latent-Shift does must reach those convolutions: the default targets are every ResNet block's
``conv1``/``conv2`` plus the attention projections (diffusers' own default is attention only, ``"attention"``).
The shift hook is moved onto the adapter-wrapped ``conv1``, so the low-rank branch sees the shifted input
exactly as the frozen convolution does; it moves back when the adapter is removed (here, or by diffusers'
``load_lora_weights`` / ``unload_lora_weights`` or PEFT's ``unload``: :func:`ls_video.unet.refresh_shift_hooks`,
run by every video call).

* :class:`LoraSettings`: rank, alpha, dropout, targets (``model.lora`` in the configs; ``configs/lora.yaml``).
* :func:`add_lora` / :func:`merge_lora`: add a trainable adapter; fold it into the weights (zero added parameters).
* :func:`adapter_state` / :func:`kohya_state`: the adapter alone, in diffusers/PEFT keys
  (``pipe.load_lora_weights``) or Kohya keys (A1111 / ComfyUI ``lora_unet_...``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel

from ls_video.errors import UsageError
from ls_video.unet import get_temporal_config, refresh_shift_hooks

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
RESNET = ["conv1", "conv2"]  # only ResnetBlock2D has modules named so in a diffusers U-Net
TARGETS = {"resnet+attention": RESNET + ATTENTION, "attention": ATTENTION, "resnet": RESNET}
ADAPTER = "default"


@dataclass
class LoraSettings:
    """A low-rank adapter on the U-Net (``rank: 0``, the default, trains the U-Net's own weights instead).

    Args:
        rank: LoRA rank ``r``; 0 disables LoRA.
        alpha: scale numerator; ``None`` uses ``rank``.
        rank_stabilized: scale the update by ``alpha / sqrt(rank)`` (rsLoRA, Kalajdzievski 2023) instead of
            ``alpha / rank``: with ``alpha = rank`` the weight change per step then matches a full fine-tune's at the
            same learning rate, whatever the rank, so the recipe's learning rate carries over (docs/RESULTS.md:
            at ``alpha / rank`` a rank-16 adapter had not learned motion after the full fine-tune's 1500 steps).
        dropout: dropout on the adapter's input.
        target_modules: ``"resnet+attention"`` (every ResNet block's ``conv1``/``conv2`` and the attention
            ``to_q/to_k/to_v/to_out.0``: what the shift needs), ``"attention"`` (diffusers' default; cannot
            learn motion through the shift's convolutions), ``"resnet"``, or a list of PEFT module-name suffixes.
    """

    rank: int = 0
    alpha: float | None = None
    rank_stabilized: bool = True
    dropout: float = 0.0
    target_modules: str | list[str] = "resnet+attention"

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise UsageError(f"lora.rank must be >= 0, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if isinstance(self.target_modules, str) and self.target_modules not in TARGETS:
            raise UsageError(f"lora.target_modules must be one of {sorted(TARGETS)} or a list of module names, "
                             f"got {self.target_modules!r}")

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    def targets(self) -> list[str]:
        return list(TARGETS[self.target_modules] if isinstance(self.target_modules, str) else self.target_modules)

    def peft_config(self):  # -> peft.LoraConfig (peft imported lazily: only LoRA runs need it)
        try:
            from peft import LoraConfig
        except ImportError:
            raise UsageError("LoRA needs peft, which is not installed: pip install peft") from None
        return LoraConfig(r=self.rank, lora_alpha=self.alpha or self.rank, lora_dropout=self.dropout,
                          use_rslora=self.rank_stabilized, init_lora_weights="gaussian", target_modules=self.targets())

    @property
    def scale(self) -> float:
        """What multiplies ``B @ A``."""
        return (self.alpha or self.rank) / (self.rank ** 0.5 if self.rank_stabilized else self.rank)


def settings_from_hparams(hparams: dict) -> LoraSettings:
    """The adapter a training checkpoint recorded (``LoraSettings()``, disabled, when it has none)."""
    return LoraSettings(**hparams.get("lora") or {})


def add_lora(unet: UNet2DConditionModel, settings: LoraSettings) -> UNet2DConditionModel:
    """Add a trainable adapter to ``unet`` in place; every other U-Net weight is frozen. The temporal mixing is
    shift hooks move onto the adapter-wrapped convolutions, so the shift acts on both branches' input."""
    if not settings.enabled:
        return unet
    unet.requires_grad_(False)
    try:
        unet.add_adapter(settings.peft_config(), adapter_name=ADAPTER)
    except ValueError as err:  # PEFT: a target list that names no module of this U-Net
        raise UsageError(f"lora.target_modules {settings.targets()} do not fit this U-Net: {err}") from None
    refresh_shift_hooks(unet)
    return unet


def merge_lora(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """Fold the adapter into the weights and remove it: a plain U-Net with the base's keys and parameter count."""
    if not getattr(unet, "peft_config", None):
        return unet
    unet.fuse_lora()
    unet.unload_lora()
    refresh_shift_hooks(unet)
    return unet


def adapter_state(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """The adapter's tensors in diffusers/PEFT keys (``down_blocks.0...to_q.lora_A.weight``)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(unet, adapter_name=ADAPTER).items()}


def kohya_state(state: dict[str, torch.Tensor], settings: LoraSettings) -> dict[str, torch.Tensor]:
    """The adapter in Kohya's key format (``lora_unet_<module path with _>.lora_down/.lora_up/.alpha``), which
    A1111, ComfyUI and diffusers' ``load_lora_weights`` read for SD-1.x U-Nets."""
    out: dict[str, torch.Tensor] = {}
    alpha = torch.tensor(settings.scale * settings.rank)  # Kohya scales by alpha / rank
    for key, value in state.items():
        module, kind = key.rsplit(".lora_", 1)
        name = "lora_unet_" + module.replace(".", "_")
        out[f"{name}.{'lora_down' if kind.startswith('A') else 'lora_up'}.weight"] = value
        out[f"{name}.alpha"] = alpha.clone()  # (safetensors refuses shared storage)
    return out


PEFT_FILE, KOHYA_FILE = "pytorch_lora_weights.safetensors", "lora_kohya.safetensors"


def save_adapter(unet: UNet2DConditionModel, settings: LoraSettings, out: str) -> dict[str, int]:
    """Write the adapter alone into folder ``out``: ``pytorch_lora_weights.safetensors`` (diffusers/PEFT keys:
    ``pipe.load_lora_weights(out)``), ``lora_kohya.safetensors`` (Kohya keys) and the U-Net's
    ``latent_shift.json`` (the shift the adapter was trained with; sampling needs it). Returns bytes per file."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from safetensors.torch import save_file

    state = adapter_state(unet)
    os.makedirs(out, exist_ok=True)
    StableDiffusionLoraLoaderMixin.save_lora_weights(
        out, unet_lora_layers=state, weight_name=PEFT_FILE,
        unet_lora_adapter_metadata=unet.peft_config[ADAPTER].to_dict())
    temporal = get_temporal_config(unet)
    meta = {"ss_network_dim": str(settings.rank), "ss_network_alpha": str(settings.scale * settings.rank),
            "ss_network_module": "networks.lora",
            "latent_shift": json.dumps(dataclasses.asdict(temporal) if temporal else None)}
    save_file(kohya_state(state, settings), os.path.join(out, KOHYA_FILE), metadata=meta)
    if temporal is not None:
        temporal.save(out)
    return {name: os.path.getsize(os.path.join(out, name)) for name in (PEFT_FILE, KOHYA_FILE)}
