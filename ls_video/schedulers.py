"""Sampling schedulers by short name (any diffusers scheduler also works from Python)."""

from __future__ import annotations

from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from ls_video.errors import UsageError

SCHEDULERS = {
    "ddim": (DDIMScheduler, {}),
    "dpm": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "euler": (EulerDiscreteScheduler, {}),
}


def make_scheduler(name: str, config: dict):
    """Build scheduler ``name`` (``ddim``, ``dpm``, ``euler``) from another scheduler's config."""
    if name not in SCHEDULERS:
        raise UsageError(f"unknown scheduler {name!r}; choose from {sorted(SCHEDULERS)}")
    cls, overrides = SCHEDULERS[name]
    return cls.from_config(config, **overrides)
