"""``torch.compile`` for (shifted) U-Nets, done the two ways that are right.

Two traps, both measured (docs/PERFORMANCE.md, "Compiling"):

* **Stale graphs.** The temporal mixing lives in module hooks, and Dynamo does not guard module
  hooks by default (``torch._dynamo.config.skip_nnmodule_hook_guards``): a U-Net compiled after
  another of the same config silently reused the other's graph (shifted ran unshifted). Every
  compile here first calls :func:`guard_hooks`, so a change of hooks recompiles instead.
* **Wrong gradients from whole-U-Net compilation.** Inductor, compiling a whole diffusers
  ``UNet2DConditionModel`` (no project code involved) for training, returned gradients that differ
  from eager for most parameters while the forward output matched (torch 2.13 CPU; the
  ``aot_eager`` backend is right, so the bug is in inductor's code generation for that graph).
  Training therefore compiles *regions*: each ``ResnetBlock2D`` (with its shift hook) and each
  ``Transformer2DModel`` on its own (what diffusers calls regional compilation), which gives eager's
  gradients and compiles several times faster. Sampling (no gradients) compiles the whole U-Net,
  optionally with CUDA graphs (``mode="reduce-overhead"``), where launch overhead matters most.
"""

from __future__ import annotations

import torch
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel

from ls_video.errors import UsageError

REGIONS = (ResnetBlock2D, Transformer2DModel)
RECOMPILE_LIMIT = 64  # one graph per distinct block shape: SD-1.5 has ~20 per pass direction


def guard_hooks() -> None:
    """Make Dynamo guard module hooks and allow one graph per block shape (process-wide).

    Both only make guards stricter or caches larger: results can only get more correct.
    """
    config = torch._dynamo.config
    config.skip_nnmodule_hook_guards = False
    config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)


def compile_regions(unet: torch.nn.Module, **compile_kwargs) -> int:
    """Compile every ResNet and transformer block of ``unet`` in place (training-safe); returns the count.

    ``compile_kwargs`` go to ``torch.compile`` (default ``dynamic=False``: block shapes are fixed in a
    run, and symbolic shapes broke inductor on these blocks). Parameters and state-dict keys are
    unchanged.
    """
    guard_hooks()
    compile_kwargs.setdefault("dynamic", False)
    count = 0
    for module in unet.modules():
        if isinstance(module, REGIONS):
            module.compile(**compile_kwargs)
            count += 1
    if count == 0:
        raise UsageError(f"{type(unet).__name__} has no ResnetBlock2D or Transformer2DModel to compile")
    return count


def compile_whole(unet: torch.nn.Module, mode: str | None = "reduce-overhead", **compile_kwargs) -> torch.nn.Module:
    """Compile the whole ``unet`` in place for sampling (no gradients; see the module docstring).

    ``mode="reduce-overhead"`` replays CUDA graphs on GPUs (one launch per U-Net call after warm-up);
    shapes are static (a new frame count, size or batch compiles again).
    """
    guard_hooks()
    compile_kwargs.setdefault("dynamic", False)
    unet.compile(mode=mode, **compile_kwargs)
    return unet
