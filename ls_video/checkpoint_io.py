"""Crash-safe checkpoint writing: a checkpoint file is either complete or absent."""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes ``PATH.tmp``, flushes it to disk, then renames it over ``PATH`` (atomic on POSIX), so a
    run killed mid-save never leaves a half-written ``last.ckpt``. Loads with ``weights_only=True``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str, storage_options: Any | None = None) -> None:
        path = str(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def load_checkpoint(self, path: str, map_location: Any | None = None, weights_only: bool | None = None
                        ) -> dict[str, Any]:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)
