"""Set the number of CPU threads PyTorch uses for the run."""

from __future__ import annotations

import lightning as L
import torch

from ls_video.errors import UsageError


class CPUThreads(L.Callback):
    """``torch.set_num_threads(num_threads)`` as soon as the callback is built (the CLI builds callbacks
    with the trainer, so data preparation such as the toy datamodule's VAE encoding runs with it too).

    Tiny models on a few CPU cores gain little from intra-op threads, and lose a lot when another
    process (a DataLoader worker, another user) takes a core: OpenMP threads then wait for each other.
    On the 2-core machine with a shared load, the toy step ran at 2.4-3.2 steps/s with one thread and
    0.2-2.3 steps/s with two (``docs/PERFORMANCE.md``).

    Args:
        num_threads: intra-op threads (``torch.set_num_threads``).
    """

    def __init__(self, num_threads: int = 1) -> None:
        if num_threads < 1:
            raise UsageError(f"num_threads must be >= 1, got {num_threads}")
        self.num_threads = num_threads
        torch.set_num_threads(num_threads)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        torch.set_num_threads(self.num_threads)
