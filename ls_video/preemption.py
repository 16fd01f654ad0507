"""A signal is a checkpoint: the helpers of :class:`ls_video.callbacks.preemption.Preemption` (the Lightning callback),
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
import weakref
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ls_video.consensus import consensus_of
from ls_video.errors import DataStalledError

# A batch that stands for "no batch came": ``{DATA_STOP: {"signal": n}}`` (a stop signal while the trainer waited
# for data, :func:`next_batch`) or ``{DATA_STOP: {"stalled": message}}`` (the stream found no data for its
# ``stall_timeout``, ls_video.datamodules.stream); :func:`stop_for_data` ends the run on every rank when any rank
# has one.
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
    :class:`~ls_video.errors.DataStalledError` naming the storage error for a stall.

    Alone: at once, no collective. Several ranks, training: the stop is a slot of the optimizer step's one
    agreement (:mod:`ls_video.consensus`): the ``DATA_STOP`` batch goes on (a null micro-batch,
    :func:`is_data_stop`) and, before the optimizer step, every rank leaves with the checkpoint of the step's
    start (the step is not taken). Validation with several ranks: one all-reduce per batch."""
    mine = batch.get(DATA_STOP) if isinstance(batch, dict) else None
    signum, stalled = (int(mine.get("signal", 0)), str(mine.get("stalled", ""))) if mine else (0, "")
    if trainer.world_size > 1 and trainer.training:
        pending = _data_stop_of(trainer)
        pending.signum, pending.stalled = pending.signum or signum, pending.stalled or stalled
        return
    any_stalled = bool(stalled)
    if trainer.world_size > 1:
        flags = torch.tensor([float(signum), float(any_stalled)], device=trainer.strategy.root_device)
        flags = trainer.strategy.reduce(flags, reduce_op="max")
        signum, any_stalled = int(flags[0].item()), bool(flags[1].item())
    _stop_for_data(trainer, signum, any_stalled, stalled)


def is_data_stop(batch: Any) -> bool:
    """Whether ``batch`` stands for "no batch came" (under DDP it is trained on as a null micro-batch)."""
    return isinstance(batch, dict) and DATA_STOP in batch


def _stop_for_data(trainer: L.Trainer, signum: int, any_stalled: bool, stalled: str) -> None:
    """End the run on every rank if any rank had no batch (``signum``: a signal; ``any_stalled``: a stall)."""
    if not signum and not any_stalled:
        return
    if any_stalled and trainer.world_size > 1:
        stalled = next(t for t in _gather_text(trainer, stalled) if t)
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


class _PendingDataStop:
    """This rank's ``DATA_STOP`` of the current optimizer step, a slot of the step's agreement: one flag per
    signal number, then a stall flag."""

    def __init__(self, trainer: L.Trainer) -> None:
        self.trainer, self.signum, self.stalled = weakref.proxy(trainer), 0, ""

    def values(self) -> list[float]:
        flags = [0.0] * (signal.NSIG + 1)
        flags[self.signum] = float(bool(self.signum))  # (index 0 unused)
        flags[-1] = float(bool(self.stalled))
        return flags

    def then(self, sums: list[float]) -> None:
        signum = max((n for n in range(1, signal.NSIG) if sums[n] > 0), default=0)
        _stop_for_data(self.trainer, signum, sums[-1] > 0, self.stalled)


_PENDING: weakref.WeakKeyDictionary[Any, _PendingDataStop] = weakref.WeakKeyDictionary()


def _data_stop_of(trainer: L.Trainer) -> _PendingDataStop:
    pending = _PENDING.get(trainer)
    if pending is None:
        pending = _PENDING[trainer] = _PendingDataStop(trainer)
        consensus_of(trainer).register("data_stop", signal.NSIG + 1, pending.values, pending.then)
    return pending


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
