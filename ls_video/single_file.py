"""The U-Net as one safetensors file in the original Stable Diffusion (LDM) key layout, for tools that load
single-file checkpoints (A1111, ComfyUI); the Latent-Shift settings ride in the file's metadata.

The key names are the inverse of diffusers' own loader (``diffusers.loaders.single_file_utils``), so
``UNet2DConditionModel.from_single_file`` reads the file back to the same weights (tested).
"""

from __future__ import annotations

import json
from typing import Any

import torch
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
from safetensors.torch import save_file

from ls_video.errors import UsageError

LDM_PREFIX = "model.diffusion_model."
# ResNet block parts: diffusers name -> LDM name (inside a block's prefix)
RESNET_PARTS = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}


def block_prefixes(config: dict[str, Any]) -> dict[str, str]:
    """diffusers module prefix -> LDM prefix for every block of an SD-layout U-Net."""
    per = config["layers_per_block"]
    if not isinstance(per, int):
        raise UsageError("single-file export needs one layers_per_block for every block (as in SD 1.x / 2.x)")
    levels = len(config["block_out_channels"])
    out: dict[str, str] = {}
    for b in range(levels):
        for j in range(per):
            i = 1 + b * (per + 1) + j
            out[f"down_blocks.{b}.resnets.{j}."] = f"input_blocks.{i}.0."
            out[f"down_blocks.{b}.attentions.{j}."] = f"input_blocks.{i}.1."
        if b < levels - 1:
            out[f"down_blocks.{b}.downsamplers.0.conv."] = f"input_blocks.{1 + b * (per + 1) + per}.0.op."
    out.update({"mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.": "middle_block.1.",
                "mid_block.resnets.1.": "middle_block.2."})
    for b, kind in enumerate(config["up_block_types"]):
        for j in range(per + 1):
            i = b * (per + 1) + j
            out[f"up_blocks.{b}.resnets.{j}."] = f"output_blocks.{i}.0."
            out[f"up_blocks.{b}.attentions.{j}."] = f"output_blocks.{i}.1."
        if b < levels - 1:
            last = b * (per + 1) + per
            out[f"up_blocks.{b}.upsamplers.0.conv."] = f"output_blocks.{last}.{2 if 'CrossAttn' in kind else 1}.conv."
    return out


def ldm_key(key: str, prefixes: dict[str, str]) -> str:
    """The LDM name of one diffusers U-Net parameter name."""
    top = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    if key in top:
        return LDM_PREFIX + top[key]
    prefix = max((p for p in prefixes if key.startswith(p)), key=len, default=None)
    if prefix is None:
        raise ValueError(f"no single-file name for U-Net parameter {key!r}")
    rest = key[len(prefix):]
    if ".resnets." in prefix:
        part, _, tail = rest.partition(".")
        rest = f"{RESNET_PARTS.get(part, part)}.{tail}"
    return LDM_PREFIX + prefixes[prefix] + rest


def to_ldm(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A diffusers U-Net state dict in the original SD key layout (same tensors)."""
    prefixes = block_prefixes(config)
    return {ldm_key(k, prefixes): v.contiguous() for k, v in state.items()}


def save_unet_single_file(unet: torch.nn.Module, path: str, metadata: dict[str, Any]) -> int:
    """Write ``unet``'s weights to ``path`` (LDM keys); ``metadata`` values are stored as JSON strings.
    Returns the number of tensors."""
    state = to_ldm(unet.state_dict(), dict(unet.config))
    save_file(state, path, metadata={k: json.dumps(v) for k, v in metadata.items()})
    return len(state)
