"""Log skipped-sample counts and stop a run whose recent data is mostly bad, on every rank at once."""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

import lightning as L
import torch

from ls_video.consensus import StepEnd, consensus_of
from ls_video.errors import BadDataError, UsageError
from ls_video.preemption import save_last_checkpoint

# Skip reasons that are the storage's fault, not the data's (ls_video.datamodules.storage): a stalled read, a refused or
# reset connection, a transfer cut short, a 5xx answer, a failing ``pipe:`` command. Counted apart.
NETWORK_REASONS = frozenset({"timeout", "connection", "truncated", "http_5xx", "pipe_error"})


class DataHealth(L.Callback):
    """Reads the ``data_stats`` that latent-shard batches carry, logs ``data/skipped_{reason}``,
    ``data/network_errors``, ``data/skipped_fraction`` (corrupt share of the recent window) and
    ``data/seen``, and stops the run once more than ``max_bad_fraction`` of the last ``window`` samples
    (over all ranks) were corrupt.

    The counts are summed over the ranks at every optimizer step (a slot of the step's one agreement,
    :mod:`ls_video.consensus`), so every rank takes the same decision at the same step (a step's last
    batch): all of them write ``last.ckpt`` and raise the same :class:`BadDataError` (rank zero's names its
    worst shards); alone, every batch is judged. Network failures never count as bad data, and only the recent
    window is judged, so a storage outage or an early bad stretch of a long run does not end it.

    Args:
        max_bad_fraction: stop above this share of corrupt samples in the window (default 5%).
        min_samples: judge only once the window holds this many samples (early noise is ignored; above
            ``window``, never: the rule is off).
        window: how many of the most recent samples (all ranks together) are judged.
    """

    def __init__(self, max_bad_fraction: float = 0.05, min_samples: int = 200, window: int = 5000) -> None:
        if not 0.0 <= max_bad_fraction <= 1.0 or min_samples < 1 or window < 1:
            raise UsageError("need 0 <= max_bad_fraction <= 1, min_samples >= 1 and window >= 1")
        self.max_bad_fraction, self.min_samples, self.window = max_bad_fraction, min_samples, window
        self._workers: dict[int, dict] = {}
        self._counted = torch.zeros(3, dtype=torch.float64)  # this rank's (good, corrupt, network) in the window
        self._recent: deque[tuple[float, float]] = deque()  # (seen, corrupt) per step, all ranks
        self._in_window = [0.0, 0.0]  # their sums
        self._local = torch.zeros(3, dtype=torch.float64)  # this rank's (good, corrupt, network) so far
        self._step_end = StepEnd()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """With several ranks the counts take part in each step's agreement (alone, every batch is judged)."""
        if stage == "fit" and trainer.world_size > 1:
            consensus_of(trainer).register("data_health", 3, self._new_counts)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._step_end.start(trainer)

    def _new_counts(self) -> torch.Tensor:
        """This rank's counts not yet in the window (the step's agreement sums them over the ranks)."""
        new = self._local - self._counted
        self._counted = self._local.clone()
        return new

    def totals(self) -> tuple[int, Counter, Counter]:
        """(good samples, skipped by reason, skipped by shard) summed over this rank's workers."""
        good, reasons, shards = 0, Counter(), Counter()
        for stats in self._workers.values():
            good += stats["yielded"]
            reasons.update(stats["skipped"])
            shards.update(stats["by_shard"])
        return good, reasons, shards

    def recent(self) -> tuple[float, float]:
        """(samples seen, corrupt samples) in the window, over all ranks."""
        return self._in_window[0], self._in_window[1]

    def _advance_window(self, new: list[float]) -> None:
        good, corrupt, _ = new
        self._push(good + corrupt, corrupt, +1)
        while len(self._recent) > 1 and self._in_window[0] - self._recent[0][0] >= self.window:
            self._push(*self._recent[0], -1)

    def _push(self, seen: float, corrupt: float, sign: int) -> None:
        """Append a step's counts to the window (``sign`` +1) or drop its oldest (-1), keeping the sums."""
        if sign > 0:
            self._recent.append((seen, corrupt))
        else:
            self._recent.popleft()
        self._in_window = [self._in_window[0] + sign * seen, self._in_window[1] + sign * corrupt]

    def _note(self, batch: Any) -> tuple[int, Counter, Counter, int, int]:
        """Take the batch's stats in; (good, reasons, shards, corrupt, network) of this rank so far."""
        stats = batch.get("data_stats") if isinstance(batch, dict) else None
        if stats:
            self._workers[stats["worker"]] = stats
        good, reasons, shards = self.totals()
        network = sum(n for r, n in reasons.items() if r in NETWORK_REASONS)
        corrupt = sum(reasons.values()) - network
        self._local = torch.tensor([good, corrupt, network], dtype=torch.float64)
        return good, reasons, shards, corrupt, network

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        """The batch's counts are this rank's before its step's agreement (made before the optimizer step)."""
        self._note(batch)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        stats = batch.get("data_stats") if isinstance(batch, dict) else None
        good, reasons, shards, corrupt, network = self._note(batch)
        if trainer.world_size == 1:  # alone: every batch advances the window, no agreement needed
            self._advance_window(self._new_counts().tolist())
        elif self._step_end.stepped(trainer):  # several ranks: once per optimizer step, on every rank alike
            self._advance_window(consensus_of(trainer).result("data_health"))
        seen, bad = self.recent()
        if stats:
            metrics = {f"data/skipped_{reason}": float(n) for reason, n in reasons.items()}
            metrics.update({"data/seen": float(good + corrupt + network), "data/network_errors": float(network),
                            "data/skipped_fraction": bad / max(1.0, seen)})
            pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)
        if seen >= self.min_samples and bad / seen > self.max_bad_fraction:
            path = save_last_checkpoint(trainer)  # every rank is here at the same step
            worst = ", ".join(f"{url} ({n})" for url, n in shards.most_common(3)) or "none on rank zero"
            raise BadDataError(f"{bad:.0f} of the last {seen:.0f} samples were corrupt ({bad / seen:.1%} > "
                               f"{self.max_bad_fraction:.0%}); reasons {dict(reasons)}; worst shards: {worst}; "
                               f"checkpoint {path} (fix or drop the shards, then --ckpt_path last)")
