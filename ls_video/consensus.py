"""One agreement of every rank per optimizer step: one all-reduce, one host read.

Several parts of a fit must take the same decision on every rank at the same step: the non-finite guard
(skip this step?), :class:`~ls_video.callbacks.preemption.Preemption` (was any rank signalled?),
:class:`~ls_video.callbacks.data_health.DataHealth` (bad-sample counts of all ranks) and
:class:`~ls_video.callbacks.bucket_counts.BucketCounts` (clips per bucket of all ranks). Each one all-reduced and read
its result on the host every step; on a GPU every such read stalls the queue of launched kernels.

Instead each *participant* registers a fixed-size slot of floats (:meth:`StepConsensus.register`) with a
function giving this rank's values. Once per optimizer step (:meth:`StepConsensus.agree`, called by the first
participant that needs the answer: the non-finite guard before the optimizer step, else a callback at the
step's last batch end) every slot is packed into one tensor, summed over the ranks in one all-reduce and read
back with one ``.tolist()``; every participant then reads its slot's sums (:meth:`StepConsensus.result`). On
a single process there is no collective at all. Slots are summed: a flag is ``> 0`` when any rank set it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch

Values = torch.Tensor | Sequence[float]

_OF_TRAINER: weakref.WeakKeyDictionary[Any, StepConsensus] = weakref.WeakKeyDictionary()


class StepConsensus:
    """The step-end agreement of one trainer's ranks (get it with :func:`consensus_of`)."""

    def __init__(self) -> None:
        self._slots: dict[str, tuple[int, Callable[[], Values]]] = {}
        self._then: dict[str, Callable[[list[float]], None]] = {}
        self._results: dict[str, list[float]] = {}
        self._agreed_step: int | None = None
        self.collectives = 0  # all-reduces issued so far (0 on a single process)

    def register(self, name: str, size: int, values: Callable[[], Values],
                 then: Callable[[list[float]], None] | None = None) -> None:
        """Take part from now on: ``values()`` gives this rank's ``size`` floats (a tensor or a sequence) when
        the step's agreement is made; ``then`` (if given) is called with the sums right after it (it may end the
        run: every rank calls it with the same sums). Every rank registers the same names and sizes, before its
        first step (registering a name again replaces its slot, as a new fit of the same trainer does)."""
        self._slots[name] = (int(size), values)
        self._agreed_step = None  # (a new fit may count its steps from the same number again)
        self._then.pop(name, None)
        if then is not None:
            self._then[name] = then
        self._results.pop(name, None)

    def registered(self, name: str) -> bool:
        return name in self._slots

    def agree(self, trainer: Any, step: int) -> None:
        """Make optimizer step ``step``'s agreement unless it is made already: every slot's values summed over
        the ranks (one all-reduce of one packed tensor, one host read; none with one process)."""
        if self._agreed_step == step:
            return
        self._agreed_step = step
        names = sorted(self._slots)  # the same order on every rank
        if not names:
            self._results = {}
            return
        many = trainer.world_size > 1
        device = trainer.strategy.root_device if many else torch.device("cpu")
        dtype = torch.float32 if device.type == "mps" else torch.float64  # (counts above 2**24 stay exact)
        parts = []
        for name in names:
            size, values = self._slots[name]
            part = torch.as_tensor(values(), dtype=dtype).to(device).reshape(-1)
            if part.numel() != size:
                raise RuntimeError(f"consensus slot {name!r} gave {part.numel()} values, registered {size}")
            parts.append(part)
        packed = torch.cat(parts)
        if many:
            packed = trainer.strategy.reduce(packed, reduce_op="sum")
            self.collectives += 1
        flat = packed.tolist()  # the one host read of the step
        self._results, start = {}, 0
        for name in names:
            size = self._slots[name][0]
            self._results[name] = flat[start:start + size]
            start += size
        for name in names:
            if name in self._then:
                self._then[name](self._results[name])

    def result(self, name: str) -> list[float]:
        """Slot ``name``'s values summed over the ranks at the last agreement (zeros before the first)."""
        return self._results.get(name, [0.0] * self._slots[name][0])


def consensus_of(trainer: Any) -> StepConsensus:
    """The :class:`StepConsensus` of ``trainer`` (one per trainer, made on first use)."""
    consensus = _OF_TRAINER.get(trainer)
    if consensus is None:
        consensus = _OF_TRAINER[trainer] = StepConsensus()
    return consensus


class StepEnd:
    """For a callback: whether an optimizer step was taken since its last ``on_train_batch_end`` (the same on
    every rank), and then the step's agreement made (if no participant made it before the step)."""

    def __init__(self) -> None:
        self.seen_step: int | None = None

    def start(self, trainer: Any) -> None:
        """At train start: steps are counted from the trainer's (resumed) global step."""
        self.seen_step = trainer.global_step

    def stepped(self, trainer: Any) -> bool:
        """Called at every train batch end: True (and the step agreed) at the last batch of a step's window."""
        stepped = self.seen_step is not None and trainer.global_step != self.seen_step
        self.seen_step = trainer.global_step
        if stepped:
            consensus_of(trainer).agree(trainer, trainer.global_step - 1)
        return stepped
