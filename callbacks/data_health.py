"""Log skipped-sample counts and stop a run whose data is mostly bad."""

from __future__ import annotations

from collections import Counter
from typing import Any

import lightning as L

from ls_video.errors import BadDataError  # noqa: F401 - raised here, defined in the library (the CLI reports it)


class DataHealth(L.Callback):
    """Reads the ``data_stats`` that latent-shard batches carry, logs ``data/skipped_{reason}``,
    ``data/skipped_fraction`` and ``data/seen``, and stops the run with a clear message naming the
    worst shards once more than ``max_bad_fraction`` of the samples seen were bad.

    Args:
        max_bad_fraction: stop above this share of bad samples (default 5%).
        min_samples: judge the fraction only after this many samples (early noise is ignored).
    """

    def __init__(self, max_bad_fraction: float = 0.05, min_samples: int = 200) -> None:
        self.max_bad_fraction, self.min_samples = max_bad_fraction, min_samples
        self._workers: dict[int, dict] = {}

    def totals(self) -> tuple[int, Counter, Counter]:
        """(good samples, skipped by reason, skipped by shard) summed over this rank's workers."""
        good, reasons, shards = 0, Counter(), Counter()
        for stats in self._workers.values():
            good += stats["yielded"]
            reasons.update(stats["skipped"])
            shards.update(stats["by_shard"])
        return good, reasons, shards

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        stats = batch.get("data_stats") if isinstance(batch, dict) else None
        if not stats:
            return
        self._workers[stats["worker"]] = stats
        good, reasons, shards = self.totals()
        bad = sum(reasons.values())
        seen = good + bad
        metrics = {f"data/skipped_{reason}": float(n) for reason, n in reasons.items()}
        metrics.update({"data/seen": float(seen), "data/skipped_fraction": bad / max(1, seen)})
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)
        if seen >= self.min_samples and bad / seen > self.max_bad_fraction:
            worst = ", ".join(f"{url} ({n})" for url, n in shards.most_common(3)) or "unknown shards"
            raise BadDataError(f"{bad} of {seen} samples were bad ({bad / seen:.1%} > {self.max_bad_fraction:.0%}); "
                               f"reasons {dict(reasons)}; worst shards: {worst}")
