"""A signal is a checkpoint: the helpers of :class:`callbacks.preemption.Preemption` (the Lightning callback),
which ends a run at the next step boundary after SIGTERM / SIGUSR1 with a resumable checkpoint and a non-zero
exit status (or a SLURM requeue): the process's noted signal, the wait for data a signal ends, the data-stop
agreement, the ``last.ckpt`` writer and the SLURM requeue.

Lightning's own SIGTERM handler broadcasts from inside the signal handler (a collective at an arbitrary
point of the step, which can pair with another rank's gradient all-reduce) and then exits with status 0
and no checkpoint. ``Preemption`` replaces it: the handler only notes the signal; at the end of
every optimizer step (never inside a gradient-accumulation window) all ranks agree (a slot of the step's
one agreement, :mod:`ls_video.consensus`) and, if any rank was signalled, every rank takes part in writing ``last.ckpt``
(atomically, through the trainer's checkpoint IO) and leaves with ``128 + signal`` as its exit status,
the status of a process the signal killed.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import subprocess
import threading
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ls_video.errors import DataStalledError

# A batch that stands for "no batch came": ``{DATA_STOP: {"signal": n}}`` (a stop signal while the trainer waited
# for data, :func:`next_batch`) or ``{DATA_STOP: {"stalled": message}}`` (the stream found no data for its
# ``stall_timeout``, datamodules.stream); :func:`stop_for_data` ends the run on every rank when any rank has one.
DATA_STOP = "__data_stop__"
_signalled = 0  # the first stop signal of this process's fit (set by Preemption's handler)
_waiting = False  # the main thread is blocked in next_batch


def note_signal(signum: int) -> None:
    """Record a stop signal (from the handler): a wait for data in :func:`next_batch` ends at once."""
    global _signalled
    _signalled = _signalled or signum
    if _waiting:  # blocked waiting for data (perhaps forever): next_batch returns a DATA_STOP batch
        raise _DataWaitInterrupted(signum)


def reset_signal() -> None:
    """Forget the noted signal (a fit starts or ends)."""
    global _signalled
    _signalled = 0


class _DataWaitInterrupted(BaseException):
    """Raised by the signal handler into a wait for data (and only there)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def next_batch(iterator: Any) -> Any:
    """``next(iterator)``, unless a stop signal comes first: then a ``DATA_STOP`` batch, at once, instead of
    waiting on for data that may never come (a storage outage)."""
    global _waiting
    try:
        _waiting = True
        try:
            if _signalled:
                return {DATA_STOP: {"signal": _signalled}}
            return next(iterator)
        finally:
            _waiting = False
    except _DataWaitInterrupted as err:
        return {DATA_STOP: {"signal": err.signum}}


def stop_loader_workers() -> None:
    """SIGKILL this process's DataLoader workers (they ignore SIGTERM, and one blocked on dead storage would
    keep the process from exiting); torch's SIGCHLD check is switched off first, we are leaving."""
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

    workers = [w for o in gc.get_objects() if issubclass(type(o), _MultiProcessingDataLoaderIter)
               for w in getattr(o, "_workers", []) if w.is_alive()]
    if not workers:
        return
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for w in workers:
        if w.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGKILL)
    for w in workers:
        w.join(timeout=10)


def _gather_text(trainer: L.Trainer, text: str) -> list[str]:
    if trainer.world_size == 1 or not torch.distributed.is_initialized():
        return [text]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, text)
    return [str(t) for t in out]


def stop_for_data(trainer: L.Trainer, batch: Any) -> None:
    """Called with every batch before it is used, on every rank: if any rank's is a ``DATA_STOP`` batch, every
    rank writes (its part of) ``last.ckpt``, stops its DataLoader workers and leaves: ``Preempted`` for a signal,
    :class:`~ls_video.errors.DataStalledError` naming the storage error for a stall. One all-reduce."""
    mine = batch.get(DATA_STOP) if isinstance(batch, dict) else None
    signum, stalled = (int(mine.get("signal", 0)), str(mine.get("stalled", ""))) if mine else (0, "")
    any_stalled = bool(stalled)
    if trainer.world_size > 1:
        flags = torch.tensor([float(signum), float(any_stalled)], device=trainer.strategy.root_device)
        flags = trainer.strategy.reduce(flags, reduce_op="max")
        signum, any_stalled = int(flags[0].item()), bool(flags[1].item())
        if any_stalled:
            stalled = next(t for t in _gather_text(trainer, stalled) if t)
    if not signum and not any_stalled:
        return
    path = save_last_checkpoint(trainer)
    stop_loader_workers()
    if signum:
        name = signal.Signals(signum).name
        rank_zero_info(f"{name} while waiting for data: stopped at step {trainer.global_step}, checkpoint {path}; "
                       "resume with --ckpt_path last")
        if signum == signal.SIGUSR1 and SLURMEnvironment.detect():
            requeue_slurm_job(trainer)
        raise Preempted(128 + signum)
    raise DataStalledError(f"{stalled}; stopped at step {trainer.global_step}, checkpoint {path} (fix the storage, "
                           "then --ckpt_path last)")


class Preempted(SystemExit):
    """Ends every rank after the preemption checkpoint; its code is ``128 + signal number``."""


def save_last_checkpoint(trainer: L.Trainer) -> str:
    """Write ``last.ckpt`` where ``--ckpt_path last`` looks (the ModelCheckpoint's folder, else
    ``{root}/checkpoints``) now, on every rank (rank zero writes). The ModelCheckpoint records it as its
    own, so the resumed run overwrites it instead of starting a ``last-v1.ckpt`` beside it."""
    callback = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    folder = callback.dirpath if callback is not None and callback.dirpath else None
    folder = folder or os.path.join(trainer.default_root_dir, "checkpoints")
    path = os.path.join(folder, ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION)
    if callback is not None:
        callback.last_model_path = path
    trainer.save_checkpoint(path, weights_only=False)  # the whole state (said, so Lightning prints no note)
    return path


def requeue_slurm_job(trainer: L.Trainer) -> None:
    """``scontrol requeue`` the job (rank zero), as Lightning's SLURM environment does."""
    if not trainer.is_global_zero:
        return
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ.get("SLURM_JOB_ID", "")
    if not job:
        rank_zero_warn("SLURM_JOB_ID is not set: not requeued")
        return
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        rank_zero_warn(f"requeueing SLURM job {job} failed: {err}")
        return
    if result.returncode == 0:
        rank_zero_info(f"requeued SLURM job {job}")
    else:
        rank_zero_warn(f"requeueing SLURM job {job} failed ({result.returncode}): {result.stderr.strip()}")
