"""Trainer options this framework does not support, refused before step 1 with one line each.

Each refusal here is a row of the table in ``docs/TRAINING.md`` ("## Trainer options"); every other row there
names the test that shows the option working. :func:`check_trainer` runs in
:meth:`ls_video.module.LatentShiftModule.setup` (any Trainer, Python or CLI) and, before any process is
launched, in the CLI (:mod:`ls_video.train_cli`), which also runs :func:`check_precision_request` on the
precision as the user wrote it (Lightning silently turns ``16-mixed`` on a CPU into ``bf16-mixed``).
"""

from __future__ import annotations

from typing import Any

import torch

from ls_video.errors import UsageError

SUPPORTED_STRATEGIES = "auto / a single device, ddp (configs/strategy/ddp_multinode.yaml) or ModelParallelStrategy " \
                       "(FSDP2, configs/strategy/fsdp.yaml)"
SUPPORTED_LOGGERS = ("CSVLogger", "TensorBoardLogger", "WandbLogger")


def check_precision_request(precision: Any, accelerator: Any) -> None:
    """The precision as written in the config or on the command line (``16``, ``"16-mixed"``, ...)."""
    text = str(precision) if precision is not None else "32-true"
    on_cpu = str(accelerator) == "cpu" or (str(accelerator) in ("auto", "None") and not torch.cuda.is_available())
    if ALIASES.get(text, text) == "16-mixed" and on_cpu:
        raise UsageError(f"trainer.precision {text} needs a CUDA GPU (on a CPU Lightning would silently train in "
                         "bf16-mixed instead); use bf16-mixed or 32-true on CPUs")
    check_precision(text)


ALIASES = {"16": "16-mixed", "bf16": "bf16-mixed", "32": "32-true", "64": "64-true"}  # (Lightning's short names)


def check_precision(precision: str) -> None:
    precision = ALIASES.get(precision, precision)
    if precision.startswith("transformer-engine"):
        raise UsageError(f"trainer.precision {precision} is not supported: Transformer Engine runs only linear "
                         "layers in FP8 and the U-Net is mostly convolutions; use bf16-mixed")
    if precision in ("64-true", "bf16-true", "16-true"):
        raise UsageError(f"trainer.precision {precision} is not supported: the frozen VAE and text encoder and "
                         "the batches stay fp32; use bf16-mixed (or 16-mixed on a GPU) for half precision, 32-true "
                         "for full")


def check_trainer(trainer: Any) -> None:
    """Refuse what cannot work with this module: raises :class:`~ls_video.errors.UsageError` (one line)."""
    check_precision(str(trainer.precision))
    strategy = trainer.strategy
    name = type(strategy).__name__
    if name in ("SingleDeviceStrategy", "ModelParallelStrategy"):
        pass
    elif name == "DDPStrategy":
        method = getattr(strategy, "_start_method", "popen")
        if method != "popen":
            raise UsageError(f"trainer.strategy ddp_{method} is not supported (the run's processes are started by "
                             f"{method}); use strategy ddp")
    else:
        raise UsageError(f"trainer.strategy {name} is not supported; use {SUPPORTED_STRATEGIES}")
    if name == "ModelParallelStrategy" and trainer.gradient_clip_algorithm == "value" \
            and trainer.gradient_clip_val:
        raise UsageError("trainer.gradient_clip_algorithm value is not supported with ModelParallelStrategy "
                         "(FSDP2); use norm")
    for option in ("limit_test_batches", "limit_predict_batches"):
        if getattr(trainer, option, 1.0) not in (1.0, None):
            raise UsageError(f"trainer.{option} has no effect: there is no test / predict stage (ls-video offers fit "
                             "and validate; sampling is ls-video sample); use limit_val_batches")
    for logger in trainer.loggers:
        if type(logger).__name__ not in SUPPORTED_LOGGERS:
            raise UsageError(f"trainer.logger {type(logger).__name__} is not supported; use one of "
                             f"{', '.join(SUPPORTED_LOGGERS)} (or false)")
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "_train_time_interval", None) is not None:
            raise UsageError("checkpoint train_time_interval is not supported (it can save inside a gradient "
                             "accumulation window); use every_n_train_steps")
