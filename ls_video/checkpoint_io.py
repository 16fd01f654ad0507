"""Crash-safe checkpoint writing: a checkpoint file is either complete or absent."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ls_video.errors import DiskFullError


class _Recorder:
    """A binary file that remembers the first ``OSError`` of a write (torch's zip writer turns it into an
    unrelated ``RuntimeError: ... unexpected pos``)."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def disk_full_message(path: str, free_before: int) -> str:
    """One line: the checkpoint not written, the free space the save started with, what is still intact."""
    folder = os.path.dirname(path) or "."
    earlier = [p for p in glob.glob(os.path.join(folder, "*.ckpt")) if os.path.isfile(p)]
    intact = (f"the previous checkpoint {max(earlier, key=os.path.getmtime)} is intact" if earlier
              else "no earlier checkpoint in that folder")
    return (f"disk full writing checkpoint {path} ({_mb(free_before)} free when the save began, "
            f"{_mb(shutil.disk_usage(folder).free)} now); {intact}; free space, then --ckpt_path last")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes ``PATH.tmp``, flushes it to disk, then renames it over ``PATH`` (atomic on POSIX), so a
    run killed mid-save never leaves a half-written ``last.ckpt``. A failed save removes ``PATH.tmp``; a full
    disk raises :class:`~ls_video.errors.DiskFullError` (one line). Loads with ``weights_only=True``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str, storage_options: Any | None = None) -> None:
        path = str(path)
        folder = os.path.dirname(path) or "."
        os.makedirs(folder, exist_ok=True)
        free_before = shutil.disk_usage(folder).free
        tmp = f"{path}.tmp"
        recorder = None
        try:
            with open(tmp, "wb") as f:
                recorder = _Recorder(f)
                torch.save(checkpoint, recorder)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as err:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            cause = recorder.error if recorder is not None and recorder.error is not None else err
            if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(disk_full_message(path, free_before)) from err
            raise

    def load_checkpoint(self, path: str, map_location: Any | None = None, weights_only: bool | None = None
                        ) -> dict[str, Any]:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)
