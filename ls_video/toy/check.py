"""Sample toy prompts in this process and score the frames from pixels (:func:`ls_video.metrics.toy.score`):
the checks of the toy recipes (toy base, personalisation, learning curve)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ls_video.metrics.toy import score
from ls_video.pipeline import LatentShiftPipeline


def sample_and_score(pipe: LatentShiftPipeline, prompts: list[str], seeds: Sequence[int], num_frames: int = 1,
                     num_inference_steps: int = 25, guidance_scale: float = 4.0
                     ) -> tuple[dict, list[np.ndarray]]:
    """One video per prompt, ``prompts[i]`` from a generator seeded ``seeds[i]``; returns the toy scores and
    the videos (``(F, H, W, 3)`` floats in [0, 1])."""
    pipe.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    videos = list(pipe(prompts, num_frames=num_frames, num_inference_steps=num_inference_steps,
                       guidance_scale=guidance_scale, generator=generators).frames)
    return score(videos, prompts), videos
