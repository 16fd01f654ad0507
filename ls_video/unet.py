"""Temporal mixing for a diffusers ``UNet2DConditionModel``.

``shift`` (Latent-Shift) is installed as a forward pre-hook on ``conv1`` of every ``ResnetBlock2D``
(down, mid and up blocks): it acts on the residual branch after ``norm1`` + activation, right before
the first convolution, as TSM's residual shift (``shift_placement="input"`` shifts the block input
instead, skip path included). Skip paths and attention are untouched. No module, parameter or buffer
is added, so ``state_dict`` keys and parameter counts stay those of the diffusers U-Net: Stable
Diffusion weights load unchanged and a trained U-Net saves with plain ``save_pretrained``. The
settings travel next to it in ``latent_shift.json``.

The baselines of the ablation (``temporal_conv``, ``temporal_attention``) add zero-initialised
layers instead; they live in :mod:`ls_video.temporal_layers`.

Outside the U-Net videos are ``(B, F, C, H, W)``; :func:`video_unet_forward` folds frames into
the batch, tells the hooks ``F`` for that call and thread only (:func:`using_frames`), and unfolds the result.

The shift never goes away unnoticed: :func:`using_frames` reaches the U-Net inside DDP, accelerate,
``torch.compile`` and PEFT wrappers (:func:`unwrap_unet`) or raises; it re-installs a shift hook whose
``conv1`` was replaced since (diffusers' ``load_lora_weights`` / ``unload_lora_weights``, PEFT's
``unload``: :func:`refresh_shift_hooks`); :func:`num_shift_hooks` counts the hooks registered now.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.resnet import ResnetBlock2D, TemporalConvLayer
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from einops import rearrange

from ls_video.compile import guard_hooks
from ls_video.errors import UsageError
from ls_video.frame_state import FrameState, make_checkpointing_frame_aware
from ls_video.shift import shift_channels, shift_frames
from ls_video.temporal_layers import (
    AddedLayerHook,
    remove_added_layers,
    temporal_attention_like,
)

TEMPORAL_CONFIG_NAME = "latent_shift.json"
TemporalMixing = Literal["shift", "none", "temporal_conv", "temporal_attention"]
ShiftPlacement = Literal["residual", "input"]
MIXINGS = ("shift", "none", "temporal_conv", "temporal_attention")
KEEPS_INPUT = (torch.nn.SiLU, torch.nn.Mish, torch.nn.GELU)  # activations whose backward reads their input only


@dataclass
class TemporalConfig:
    """How frames talk to each other inside the U-Net.

    Args:
        temporal_mixing: ``"shift"`` (Latent-Shift), ``"none"`` (frames independent, an image model),
            or the added-layer baselines ``"temporal_conv"`` / ``"temporal_attention"``.
        shift_fraction: share of channels shifted in each direction (1/8 forward + 1/8 backward).
        shift_placement: ``"residual"`` (before ``conv1``, the default) or ``"input"`` (the whole block
            input, skip path included; TSM's in-place shift).
        deep_shift_frames: how many frames the shift moves in the lowest-resolution blocks (the last down
            block, the mid block, the first up block); 1 (the default) moves one frame everywhere. Larger
            values widen the temporal reach of one U-Net pass without a parameter (docs/RESULTS.md, 16 frames).
    """

    temporal_mixing: TemporalMixing = "shift"
    shift_fraction: float = 0.125
    shift_placement: ShiftPlacement = "residual"
    deep_shift_frames: int = 1

    def __post_init__(self) -> None:
        if self.temporal_mixing not in MIXINGS:
            raise UsageError(f"temporal_mixing must be one of {', '.join(MIXINGS)}; got {self.temporal_mixing!r}")
        if self.shift_placement not in ("residual", "input"):
            raise UsageError(f"shift_placement must be 'residual' or 'input', got {self.shift_placement!r}")
        shift_channels(1, self.shift_fraction)  # validates the range
        if not isinstance(self.deep_shift_frames, int) or self.deep_shift_frames < 1:
            raise UsageError(f"deep_shift_frames must be an integer >= 1, got {self.deep_shift_frames!r}")

    def save(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, TEMPORAL_CONFIG_NAME), "w") as f:
            json.dump(asdict(self), f, indent=2)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> TemporalConfig | None:
        """Read ``directory/latent_shift.json``; ``None`` when absent (e.g. a plain SD U-Net)."""
        path = os.path.join(directory, TEMPORAL_CONFIG_NAME)
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            try:
                settings = json.load(f)
            except json.JSONDecodeError as err:
                raise UsageError(f"{path} is not JSON: {err}") from None
        if not isinstance(settings, dict):
            raise UsageError(f"{path} must hold an object of temporal settings, got {type(settings).__name__}")
        unknown = sorted(set(settings) - set(cls.__dataclass_fields__))
        if unknown:
            raise UsageError(f"{path}: unknown temporal settings {unknown} "
                             f"(known: {', '.join(cls.__dataclass_fields__)})")
        return cls(**settings)


# DDP / accelerate, FSDP, torch.compile, PEFT's PeftModel (its .base_model.model)
WRAPPED = ("module", "_fsdp_wrapped_module", "_orig_mod", "base_model")


def unwrap_unet(model: torch.nn.Module) -> torch.nn.Module:
    """The module carrying the temporal mixing inside ``model``'s wrappers, else the innermost one.

    Follows ``.module`` (DDP, accelerate), FSDP's wrapped module, ``._orig_mod`` (``torch.compile``'s
    ``OptimizedModule``) and ``.base_model.model`` (PEFT's ``PeftModel``), nested in any order.
    ``torch.nn.DataParallel`` is refused: it splits the folded frames of a clip across devices and runs them
    in other threads.
    """
    for _ in range(16):  # wrappers nest a few levels at most
        if getattr(model, "_latent_shift", None) is not None:
            return model
        if isinstance(model, torch.nn.DataParallel):
            raise UsageError("torch.nn.DataParallel splits the frames of a clip across devices: use DDP "
                             "(Lightning's strategy='ddp') or one device")
        inner = None
        for name in WRAPPED:
            inner = model._modules.get(name) if isinstance(model, torch.nn.Module) else None
            if name == "base_model" and inner is not None:
                inner = inner._modules.get("model")  # PeftModel.base_model is the tuner; .model the U-Net
            if inner is not None:
                break
        if inner is None:
            return model
        model = inner
    return model


def _temporal(unet: torch.nn.Module) -> tuple[torch.nn.Module, _Temporal | None]:
    inner = unwrap_unet(unet)
    return inner, getattr(inner, "_latent_shift", None)


def using_frames(unet: torch.nn.Module, num_frames: int,
                 circular: bool = False) -> contextlib.AbstractContextManager[None]:
    """Within the block, calls of ``unet`` from this thread treat their batch as clips of ``num_frames`` frames.

    ``circular``: the clips are loops, the shift wraps around their ends (frame 0's previous frame is the last);
    only the shift can (an added-layer baseline is a :class:`UsageError`).

    ``unet`` may be wrapped (:func:`unwrap_unet`). A plain image U-Net (no temporal mixing anywhere in it) gets
    a no-op: its frames stay independent. A video U-Net that cannot be reached is a :class:`UsageError`, never
    a silent image model. Shift hooks whose ``conv1`` was replaced are re-installed first
    (:func:`refresh_shift_hooks`).
    """
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise UsageError(f"num_frames must be an integer >= 1, got {num_frames!r}")
    inner, temporal = _temporal(unet)
    if temporal is None:
        if any(getattr(m, "_latent_shift", None) is not None for m in inner.modules()):
            raise UsageError(f"{type(unet).__name__} holds a video U-Net that using_frames cannot reach (through "
                             ".module, ._orig_mod or .base_model.model): pass that U-Net itself")
        return contextlib.nullcontext()
    if circular and temporal.config.temporal_mixing not in ("shift", "none"):
        raise UsageError(f"a loop (circular shift) needs temporal_mixing='shift', this U-Net has "
                         f"{temporal.config.temporal_mixing!r}")
    temporal.refresh(inner)
    return temporal.state.using_frames(num_frames, circular)


class _ShiftHook:
    """Forward pre-hook: shift the hooked module's first input over frames.

    ``n`` (channels moved each way) is fixed when the hook is installed, so a call is one operator:
    nothing is validated here (:func:`video_unet_forward` folds frames, so ``F`` divides the batch).
    ``in_place`` (the ``conv1`` hook): the input is the fresh activation that only ``conv1`` reads, so
    it is shifted in place (no full-size copy). Under autograd too (``in_place_grad``) when the block's
    activation keeps its input, not its output, for backward (SiLU, as in every SD U-Net; not ReLU).
    The ``"input"`` placement shifts the block input, which the skip path reads too: out of place.
    """

    def __init__(self, state: FrameState, n: int, in_place: bool = False, frames_moved: int = 1,
                 in_place_grad: bool = False) -> None:
        self.state = state
        self.n = n
        self.in_place = in_place
        self.in_place_grad = in_place and in_place_grad  # also under autograd (the producer keeps its input)
        self.frames_moved = frames_moved  # a shift of k frames is k one-frame shifts (zeros enter at the ends)

    def __call__(self, module: torch.nn.Module, args: tuple) -> tuple | None:
        num_frames = self.state.num_frames
        if num_frames == 1 or self.n == 0:
            return None  # the identity: leave the input as it is
        x = args[0]
        in_place = self.in_place_grad if torch.is_grad_enabled() else self.in_place
        circular = self.state.circular
        for _ in range(self.frames_moved):
            x = shift_frames(x, num_frames, self.n, in_place, circular)
        return (x, *args[1:])


_REFRESH_LOCK = threading.Lock()  # taken only when a hook must move (two threads must not both move it)


def _install_shift_hooks(unet: torch.nn.Module, config: TemporalConfig, state: FrameState) -> tuple[list, list]:
    """Register the shift hooks; returns their handles and, for the residual placement, ``(block, conv1)``
    pairs: the module each hook sits on, to notice when a wrapper (LoRA) replaced it or was removed."""
    handles, targets = [], []
    deep = set()  # the lowest-resolution blocks, where the shift may move more than one frame
    if config.deep_shift_frames > 1:
        deep = {id(m) for part in (unet.down_blocks[-1], unet.mid_block, unet.up_blocks[0]) for m in part.modules()}
    residual = config.shift_placement == "residual"
    for module in list(unet.modules()):
        if not isinstance(module, ResnetBlock2D):
            continue
        target = module.conv1 if residual else module
        n = shift_channels(module.in_channels, config.shift_fraction)  # (conv1 may be a LoRA wrapper)
        moved = config.deep_shift_frames if id(module) in deep else 1
        hook = _ShiftHook(state, n, in_place=residual, frames_moved=moved,
                          in_place_grad=isinstance(module.nonlinearity, KEEPS_INPUT))
        handles.append(target.register_forward_pre_hook(hook))
        if residual:
            targets.append((module, target))
    return handles, targets


class _Temporal:
    """What :func:`apply_temporal_mixing` attaches to a U-Net (a plain attribute, not a module)."""

    def __init__(self, config: TemporalConfig, state: FrameState, handles: list, targets: list) -> None:
        self.config = config
        self.state = state
        self.handles = handles  # one per hooked block
        self.targets = targets  # (ResnetBlock2D, the conv1 its shift hook is on): residual shift only

    def stale(self) -> bool:
        """Whether a block's ``conv1`` is no longer the module its hook was registered on."""
        for block, target in self.targets:  # (runs every call: a plain loop over dict lookups, ~0.1 us a block)
            if block._modules.get("conv1") is not target:
                return True
        return False

    def refresh(self, unet: torch.nn.Module) -> bool:
        """Move the shift hooks onto the current ``conv1`` modules when any was replaced; whether they moved."""
        if not self.stale():
            return False
        with _REFRESH_LOCK:
            if not self.stale():
                return False
            for handle in self.handles:
                handle.remove()
            self.handles, self.targets = _install_shift_hooks(unet, self.config, self.state)
        return True


def apply_temporal_mixing(
    unet: UNet2DConditionModel, config: TemporalConfig | None = None
) -> UNet2DConditionModel:
    """Install (or replace) temporal mixing on ``unet`` in place and return it.

    Added layers (``temporal_conv`` / ``temporal_attention``) are created zero-initialised on the
    U-Net's device and dtype; an earlier mixing's hooks and added layers are removed first. Dynamo is
    told to guard module hooks (:func:`ls_video.compile.guard_hooks`), so a user's own
    ``torch.compile(unet)`` never reuses the graph of another U-Net of the same config without them.
    Gradient checkpointing, on now or enabled later with ``unet.enable_gradient_checkpointing()``,
    recomputes blocks at the frame count of their forward call
    (:func:`ls_video.frame_state.make_checkpointing_frame_aware`).
    """
    config = config or TemporalConfig()
    guard_hooks()
    old = getattr(unet, "_latent_shift", None)
    if old is not None:
        for handle in old.handles:
            handle.remove()
    remove_added_layers(unet)
    state = old.state if old is not None else FrameState()
    handles, targets = [], []
    if config.temporal_mixing == "shift":
        handles, targets = _install_shift_hooks(unet, config, state)
    ref = next(unet.parameters())
    for module in list(unet.modules()):
        if config.temporal_mixing == "temporal_conv" and isinstance(module, ResnetBlock2D):
            with torch.device(ref.device):
                module.temporal_conv = TemporalConvLayer(module.conv2.out_channels,
                                                         norm_num_groups=module.norm2.num_groups)
            module.temporal_conv.to(ref.dtype)
            handles.append(module.register_forward_hook(AddedLayerHook(state, "temporal_conv")))
        elif config.temporal_mixing == "temporal_attention" and isinstance(module, Transformer2DModel):
            with torch.device(ref.device):
                module.temporal_attention = temporal_attention_like(module)
            torch.nn.Module.to(module.temporal_attention, ref.dtype)  # (ModelMixin.to warns on dtype casts)
            handles.append(module.register_forward_hook(AddedLayerHook(state, "temporal_attention")))
    unet._latent_shift = _Temporal(config, state, handles, targets)
    make_checkpointing_frame_aware(unet, state)
    return unet


def get_temporal_config(unet: torch.nn.Module) -> TemporalConfig | None:
    """The temporal settings installed on ``unet`` (or the U-Net it wraps), or ``None`` for a plain image U-Net."""
    return getattr(_temporal(unet)[1], "config", None)


def num_shift_hooks(unet: torch.nn.Module) -> int:
    """How many temporal hooks (shift or added layer) of ``unet`` are registered on its modules now.

    Hooks are counted where they live, not as installed: one left on a module that a wrapper replaced
    (e.g. a LoRA layer removed by ``unload_lora``) does not count until :func:`refresh_shift_hooks` (or the
    next :func:`using_frames`) moves it.
    """
    inner, temporal = _temporal(unet)
    if temporal is None:
        return 0
    return sum(isinstance(hook, (_ShiftHook, AddedLayerHook)) and hook.state is temporal.state
               for module in inner.modules()
               for hook in (*module._forward_pre_hooks.values(), *module._forward_hooks.values()))


def refresh_shift_hooks(unet: torch.nn.Module) -> bool:
    """Re-install the shift hooks if a block's ``conv1`` was replaced since they were installed (a LoRA
    adapter loaded, fused or unloaded by diffusers or PEFT); returns whether they moved. :func:`using_frames`
    does it on every call, so this is only needed to count hooks (:func:`num_shift_hooks`) after a change."""
    inner, temporal = _temporal(unet)
    return temporal.refresh(inner) if temporal is not None else False


def video_unet_forward(
    unet: UNet2DConditionModel,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    circular: bool = False,
) -> torch.Tensor:
    """Run the U-Net on a video batch (loops when ``circular``: see :func:`using_frames`).

    Args:
        latents: ``(B, F, C, h, w)`` noisy latents.
        timesteps: ``(B,)`` one timestep per clip (or a scalar), shared by its frames.
        encoder_hidden_states: ``(B, L, D)`` text embeddings, shared by the frames of a clip, or
            ``(B, F, L, D)``: one per frame (prompt travel).

    Returns:
        ``(B, F, C, h, w)`` model output (noise or v, as the scheduler's ``prediction_type``).
    """
    x, t, context = fold_video_inputs(latents, timesteps, encoder_hidden_states)
    with using_frames(unet, latents.shape[1], circular):
        out = unet(x, t, encoder_hidden_states=context, return_dict=False)[0]
    return rearrange(out, "(b f) c h w -> b f c h w", b=latents.shape[0])


def fold_video_inputs(latents: torch.Tensor, timesteps: torch.Tensor | float, encoder_hidden_states: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The U-Net's ``(B·F, ...)`` inputs of a video call (see :func:`video_unet_forward`): latents folded, one
    timestep and one text embedding per frame row (``(B, L, D)`` repeated per frame, ``(B, F, L, D)`` folded)."""
    b, f = latents.shape[:2]
    x = rearrange(latents, "b f c h w -> (b f) c h w")
    timesteps = torch.as_tensor(timesteps, device=latents.device)
    if timesteps.ndim == 0:
        timesteps = timesteps.expand(b)
    t = timesteps.repeat_interleave(f)
    if encoder_hidden_states.ndim == 4:
        context = rearrange(encoder_hidden_states, "b f l d -> (b f) l d")
    else:
        context = encoder_hidden_states.repeat_interleave(f, dim=0)
    return x, t, context
