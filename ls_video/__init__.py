"""Latent-Shift: text-to-video from a text-to-image latent diffusion model with a temporal shift."""

import os as _os

# The wheel installs datamodules/, callbacks/, configs/ and assets/ inside this package (pyproject's package-dir);
# in a clone they sit beside it, and the clone's root joins this package's path so that ``ls_video.datamodules``
# etc. name them there too (one name for each module, clone and wheel alike).
_HERE = _os.path.dirname(_os.path.abspath(__file__))
_ROOT = _os.path.dirname(_HERE)
if not _os.path.isdir(_os.path.join(_HERE, "datamodules")) and _os.path.isfile(
        _os.path.join(_ROOT, "datamodules", "__init__.py")):
    __path__.append(_ROOT)

from ls_video.shift import temporal_shift  # noqa: E402 (after the path above)
from ls_video.unet import (  # noqa: E402
    TemporalConfig,
    apply_temporal_mixing,
    get_temporal_config,
    video_unet_forward,
)

__all__ = [
    "TemporalConfig",
    "apply_temporal_mixing",
    "get_temporal_config",
    "temporal_shift",
    "video_unet_forward",
]
__version__ = "0.1.0"
