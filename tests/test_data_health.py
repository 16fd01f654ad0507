"""``ls_video.callbacks.DataHealth``'s rule on one rank: network failures apart, a recent window judged."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ls_video.callbacks import DataHealth
from ls_video.errors import BadDataError


class Trainer(SimpleNamespace):
    def __init__(self) -> None:
        super().__init__(world_size=1, callbacks=[], default_root_dir="run", saved=[])

    def save_checkpoint(self, path: str, weights_only: bool | None = None) -> None:  # (as Lightning's)
        self.saved.append(path)


def feed(health: DataHealth, trainer: Trainer, good: int, skipped: dict[str, int], state: dict) -> None:
    """One batch whose worker has, since the last one, yielded ``good`` more and skipped ``skipped`` more."""
    state["yielded"] += good
    for reason, n in skipped.items():
        state["skipped"][reason] = state["skipped"].get(reason, 0) + n
    stats = {"worker": 0, "yielded": state["yielded"], "skipped": dict(state["skipped"]),
             "by_shard": {"s.tar": sum(state["skipped"].values())}}
    module = SimpleNamespace(log_dict=lambda metrics, **kw: state.setdefault("logged", []).append(metrics))
    health.on_train_batch_end(trainer, module, None, {"data_stats": stats}, 0)


def test_network_failures_never_count_as_bad_data():
    """Half the samples lost to timeouts, resets and 5xx: logged as network errors, the run goes on (fails if
    the rule counted every skip reason alike, as before)."""
    health, trainer, state = DataHealth(max_bad_fraction=0.05, min_samples=10, window=100), Trainer(), {
        "yielded": 0, "skipped": {}}
    for _ in range(50):
        feed(health, trainer, 4, {"timeout": 2, "connection": 1, "http_5xx": 1}, state)
    assert not trainer.saved and health.recent()[1] == 0.0
    assert state["logged"][-1]["data/network_errors"] == 200.0


def test_a_late_bad_stretch_is_judged_on_the_recent_window():
    """After 10000 good samples, 30 of the next 200 are corrupt: 0.3% of the run but 15% of the last 200, so the
    run stops, with a checkpoint (fails if the whole run's fraction were judged)."""
    health, trainer, state = DataHealth(max_bad_fraction=0.05, min_samples=50, window=200), Trainer(), {
        "yielded": 0, "skipped": {}}
    for _ in range(1000):
        feed(health, trainer, 10, {}, state)
    assert health.recent()[0] < 220  # the window slid: old steps left it
    with pytest.raises(BadDataError, match="s.tar"):
        for _ in range(20):
            feed(health, trainer, 7, {"corrupt_npy": 2, "bad_shape": 1}, state)
    assert trainer.saved == ["run/checkpoints/last.ckpt"]


def test_an_early_bad_stretch_leaves_the_window():
    """A corrupt stretch below the limit is forgotten once ``window`` newer samples arrived."""
    health, trainer, state = DataHealth(max_bad_fraction=0.5, min_samples=10, window=100), Trainer(), {
        "yielded": 0, "skipped": {}}
    feed(health, trainer, 6, {"corrupt_npy": 4}, state)
    assert health.recent() == (10.0, 4.0)
    for _ in range(20):
        feed(health, trainer, 10, {}, state)
    seen, bad = health.recent()
    assert bad == 0.0 and 100 <= seen <= 110
