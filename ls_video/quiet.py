"""The one place where the training command silences known, harmless messages, each by its exact text.

Everything else (our own warnings, Lightning's and diffusers' other warnings) still shows.
"""

from __future__ import annotations

import logging
import warnings

# (message regex, category, why it is harmless here)
WARNINGS = [
    # Lightning's own `_pytree` helper still builds torch's deprecated `LeafSpec`; nothing we call.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # The frozen VAE and text encoder are in eval mode on purpose (DESIGN.md: "frozen means frozen";
    # `LatentShiftModule.train` keeps them there); Lightning warns about any module in eval mode.
    (r"Found \d+ module\(s\) in eval mode at the start of training", UserWarning),
]
# Lightning advertises its cloud products (litlogger, litmodels) as INFO lines starting with this.
TIP_PREFIX = "💡 Tip:"


def _no_tip(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(TIP_PREFIX)


def quiet() -> None:
    """Install the filters above (idempotent)."""
    for message, category in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    from lightning_utilities.core import rank_zero

    logger = rank_zero.log  # the logger behind Lightning's `rank_zero_info`, which prints the tips
    if _no_tip not in logger.filters:
        logger.addFilter(_no_tip)
