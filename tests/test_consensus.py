"""One step-end agreement per optimizer step (:mod:`ls_video.consensus`): the non-finite guard, Preemption,
DataHealth and BucketCounts share one all-reduce and one host read; none on a single process."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import yaml

from ls_video.consensus import StepConsensus


class FakeStrategy:
    """Sums as if a second rank had sent ``other`` (records each reduce)."""

    def __init__(self, other: list[float]) -> None:
        self.root_device, self.other, self.reduces = torch.device("cpu"), other, []

    def reduce(self, tensor: torch.Tensor, reduce_op: str) -> torch.Tensor:
        self.reduces.append((tensor.clone(), reduce_op))
        return tensor + torch.tensor(self.other, dtype=tensor.dtype)


def test_slots_are_packed_in_one_reduce_and_handed_back_per_name():
    """Guards against a slot read from another's place (packing order differs from unpacking) or a second
    reduce for the same step."""
    strategy = FakeStrategy(other=[1.0, 0.0, 5.0, 0.0])  # sorted names: a (1 value), b (3 values)
    trainer = SimpleNamespace(world_size=2, strategy=strategy)
    consensus = StepConsensus()
    consensus.register("b", 3, lambda: [1.0, 2.0, 3.0])
    consensus.register("a", 1, lambda: torch.tensor(1.0))
    consensus.agree(trainer, step=7)
    consensus.agree(trainer, step=7)  # the same step: already agreed
    assert len(strategy.reduces) == 1 and strategy.reduces[0][1] == "sum" and consensus.collectives == 1
    assert consensus.result("a") == [2.0] and consensus.result("b") == [1.0, 7.0, 3.0]
    consensus.agree(trainer, step=8)
    assert len(strategy.reduces) == 2


def test_one_process_issues_no_collective():
    trainer = SimpleNamespace(world_size=1, strategy=None)
    consensus = StepConsensus()
    consensus.register("x", 2, lambda: [3.0, 4.0])
    consensus.agree(trainer, step=0)
    assert consensus.collectives == 0 and consensus.result("x") == [3.0, 4.0]


def test_a_slot_of_the_wrong_size_is_refused():
    consensus = StepConsensus()
    consensus.register("x", 2, lambda: [1.0])
    with pytest.raises(RuntimeError, match="'x' gave 1 values, registered 2"):
        consensus.agree(SimpleNamespace(world_size=1), step=0)


def _fit(tiny_base, tmp_path, devices: int) -> list[dict]:
    from shipped import add_callback, run, shipped_toy, write

    cfg = shipped_toy(tmp_path, tiny_base, devices=devices, strategy="ddp" if devices > 1 else "auto",
                      max_steps=4, limit_val_batches=0, log_every_n_steps=1)
    add_callback(cfg, "ls_video.callbacks.BucketCounts")
    add_callback(cfg, "count_collectives.CountCollectives", out=str(tmp_path / "counts"))
    r = run("fit", "-c", str(write(cfg, tmp_path / "cfg.yaml")), timeout=600)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    return [json.loads((tmp_path / "counts" / f"rank{k}.json").read_text()) for k in range(devices)]


@pytest.mark.slow
def test_one_collective_per_optimizer_step_with_two_processes_none_alone(tiny_base, tmp_path):
    """2 CPU processes (gloo), the shipped toy config's callbacks (DataHealth, EMA, ...) plus Preemption (the
    CLI's) and BucketCounts, the data-stop check of every batch: exactly one collective per optimizer step on
    each rank, and none on one process. Fails on separate agreements (before: the non-finite guard, Preemption,
    DataHealth, the data-stop check and Lightning's SIGTERM broadcast: 5 per step)."""
    counts = _fit(tiny_base, tmp_path / "ddp", devices=2)
    assert [c["global_step"] for c in counts] == [4, 4]
    assert [c["collectives"] for c in counts] == [4, 4], [c["where"] for c in counts]
    alone = _fit(tiny_base, tmp_path / "alone", devices=1)[0]
    assert alone["global_step"] == 4 and alone["collectives"] == 0, alone["where"]


@pytest.mark.slow
def test_a_stall_on_two_processes_is_agreed_at_the_step_end(tiny_base, tmp_path):
    """2 processes over dead storage (``stall_timeout`` 3 s): each rank trains its "no batch came" as a null
    micro-batch and the step's one agreement stops both before the optimizer step: exit 2, one
    ``DataStalledError`` line, ``last.ckpt`` of step 0, and one agreement plus the gather of the error message
    (fails on a separate data-stop all-reduce per batch, and on Lightning's SIGTERM broadcast per batch)."""
    from fault_helpers import dead_urls, kill_session, shard_config, start

    config = shard_config(tmp_path, tiny_base, dead_urls(), stall_timeout=3.0,
                          trainer={"devices": 2, "strategy": "ddp"})
    cfg = yaml.safe_load(config.read_text())
    cfg["trainer"]["callbacks"] = [{"class_path": "count_collectives.CountCollectives",
                                    "init_args": {"out": str(tmp_path / "counts")}}]
    config.write_text(yaml.safe_dump(cfg))
    proc, log = start(tmp_path, "fit", "-c", str(config))
    try:
        proc.wait(timeout=300)
    finally:
        kill_session(proc)
    text = log.read_text()
    assert proc.returncode == 2, text[-3000:]
    lines = [line for line in text.splitlines() if "error: DataStalledError" in line]
    assert len(lines) == 1 and "Traceback" not in text and "last.ckpt" in lines[0], text[-3000:]
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 0
    for k in range(2):
        counts = json.loads((tmp_path / "counts" / f"rank{k}.json").read_text())
        assert counts["where"] == {"consensus.py:agree": 1, "preemption.py:_gather_text": 1}, counts
