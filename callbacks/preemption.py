"""SIGTERM / SIGUSR1 end a run at the next step boundary with a resumable checkpoint and a non-zero exit
status (or a SLURM requeue); the helpers it uses (the wait for data a signal ends, the data-stop agreement, the
``last.ckpt`` writer) are in :mod:`ls_video.preemption`."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info

from ls_video.consensus import StepEnd, consensus_of
from ls_video.errors import UsageError
from ls_video.preemption import Preempted, note_signal, requeue_slurm_job, reset_signal, save_last_checkpoint


class Preemption(L.Callback):
    """Turns ``signals`` into a checkpoint at the next step boundary and a non-zero exit.

    Args:
        signals: signal names to handle (``SIGTERM``: Kubernetes, torchrun, most schedulers;
            ``SIGUSR1``: SLURM's ``--signal=USR1@90`` before the time limit).
        requeue: under SLURM, requeue the job (``scontrol requeue $SLURM_JOB_ID``) after the checkpoint;
            the requeued job resumes when its command has ``--ckpt_path last``.
        save_on_train_end: also write ``last.ckpt`` when fit ends at a step the periodic checkpoints missed
            (``max_steps`` not a multiple of ``every_n_train_steps``), so the last steps are never lost.
    """

    def __init__(self, signals: list[str] = ["SIGTERM", "SIGUSR1"], requeue: bool = True,  # noqa: B006
                 save_on_train_end: bool = True) -> None:
        unknown = [s for s in signals if not isinstance(getattr(signal, s, None), signal.Signals)]
        if unknown:
            raise UsageError(f"unknown signal names {unknown}; use e.g. SIGTERM, SIGUSR1")
        self.signals, self.requeue = [getattr(signal, s) for s in signals], requeue
        self.save_on_train_end = save_on_train_end
        self.received = 0
        self._previous: dict[int, Any] = {}
        self._pid, self._active = os.getpid(), False
        self._step_end = StepEnd()

    def _note(self, signum: int, frame: Any) -> None:
        """The handler: no I/O, no collective; the step boundary does the work. (DataLoader workers ignore the
        signals: ``ls_video.datamodules.stream.ignore_stop_signals``; a forked copy of this handler ignores them
        too.)"""
        if os.getpid() != self._pid:
            return
        if not self._active:  # left installed by Lightning's teardown after fit: behave as if absent
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = self.received or signum
        note_signal(signum)

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if not self._active:
            reset_signal()
        self._pid, self._active = os.getpid(), True
        for sig in self.signals:
            previous = signal.signal(sig, self._note)
            self._previous.setdefault(sig, previous)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """From setup on, a signal is noted (Lightning then adds its handlers, which call this one too); the
        signal takes part in each step's agreement (:mod:`ls_video.consensus`): one flag per handled signal."""
        if stage == "fit":
            self._install()
            consensus_of(trainer).register("preemption", len(self.signals), self._flags)
            self._silence_lightning_sigterm_broadcast(trainer)

    def _silence_lightning_sigterm_broadcast(self, trainer: L.Trainer) -> None:
        """Lightning (2.x) broadcasts ``trainer.received_sigterm`` from rank zero before every batch under DDP
        (a collective and a host read per batch). Only Lightning's SIGTERM handler sets it, and this callback
        replaces that handler, so the broadcast could only ever say "no": it is switched off for this trainer."""
        loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
        if signal.SIGTERM in self.signals and hasattr(loop, "_broadcast_sigterm_tensor"):
            loop._broadcast_sigterm_tensor = lambda: None

    def _flags(self) -> list[float]:
        return [float(self.received == sig) for sig in self.signals]

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Lightning's handlers (registered after setup, before the sanity check) are replaced: only the note
        remains, from the first hook after their registration on."""
        self._install()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()  # (no sanity check ran: the first hook after Lightning's registration)
        self._step_end.start(trainer)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._active = False
        reset_signal()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def agreed_signal(self, trainer: L.Trainer) -> int:
        """The largest signal number any rank received (0: none), from the step's agreement; alone, this
        process's signal as it is now."""
        if trainer.world_size == 1:
            return self.received
        flags = consensus_of(trainer).result("preemption")
        return max((int(sig) for sig, n in zip(self.signals, flags, strict=True) if n > 0), default=0)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """At a step boundary only: inside an accumulation window (no optimizer step since the last batch, the
        same on every rank) the signal waits for the window's end, so a resume never splits a window."""
        if not self._step_end.stepped(trainer):
            return
        signum = self.agreed_signal(trainer)
        if not signum:
            return
        path = save_last_checkpoint(trainer)
        name = signal.Signals(signum).name
        rank_zero_info(f"{name}: stopped at step {trainer.global_step}, checkpoint {path}; "
                       "resume with --ckpt_path last")
        if self.requeue and signum == signal.SIGUSR1 and SLURMEnvironment.detect():
            requeue_slurm_job(trainer)
        raise Preempted(128 + signum)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        callback = trainer.checkpoint_callback
        saved_at = getattr(callback, "_last_global_step_saved", None)  # Lightning's record of its last save
        if self.save_on_train_end and callback is not None and saved_at != trainer.global_step:
            save_last_checkpoint(trainer)
