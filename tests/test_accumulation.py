"""Gradient accumulation (``accumulate_grad_batches``): each micro-batch its own noise, one skip decision,
one EMA update and one preemption point per optimizer step, and a resume equal to not stopping."""

from __future__ import annotations

import hashlib
import json
import os
import signal

import lightning as L
import pytest
import torch
import yaml
from test_ema_values import by_hand
from test_train_cli import ROOT, train, write_config

from ls_video.callbacks import EMA
from ls_video.callbacks.preemption import Preemption
from ls_video.module import LatentShiftModule
from ls_video.optim import OptimConfig

ACCUMULATE = 2


def batches(n: int, same: bool = False) -> list[dict]:
    """``n`` tiny video batches (``same``: all equal, so a resumed epoch that restarts its data draws the same)."""
    g = torch.Generator().manual_seed(0)
    first = torch.randn(2, 2, 4, 8, 8, generator=g)
    return [{"latents": first.clone() if same else torch.randn(2, 2, 4, 8, 8, generator=g),
             "captions": ["a red square", "a blue circle"]} for _ in range(n)]


def fit(tiny_base: str, tmp_path, steps: int, data: list[dict], callbacks=(), ckpt_path: str | None = None,
        accumulate: int = ACCUMULATE) -> LatentShiftModule:
    torch.manual_seed(0)
    module = LatentShiftModule(tiny_base, optim=OptimConfig(warmup_steps=0, learning_rate=1e-2))
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", default_root_dir=tmp_path, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        limit_val_batches=0, accumulate_grad_batches=accumulate, callbacks=list(callbacks))
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=None), ckpt_path=ckpt_path)
    return module


def trainable(module: L.LightningModule) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.unet.named_parameters() if p.requires_grad}


class StepWeights(L.Callback):
    """The trainable weights at the start and after every optimizer step (not after inner micro-batches)."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []
        self.steps: list[int] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        self.weights.append(trainable(pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % ACCUMULATE == 0:
            self.weights.append(trainable(pl_module))
            self.steps.append(trainer.global_step)


class NanMicroBatch(L.Callback):
    """Makes batch ``index`` (micro-batch 0 of optimizer step 1 with accumulation 2) all NaN."""

    def __init__(self, index: int) -> None:
        self.index = index

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.index:
            batch["latents"] = torch.full_like(batch["latents"], float("nan"))


def test_nonfinite_first_micro_batch_skips_the_whole_step(tiny_base, tmp_path):
    """Guards against the window's last (finite) micro-batch clearing the skip a non-finite first one set:
    the NaN gradients then reached AdamW and every weight of the run became NaN (exit 0)."""
    record = StepWeights()
    module = fit(tiny_base, tmp_path, 3, batches(3 * ACCUMULATE), [record, NanMicroBatch(ACCUMULATE)])
    assert record.steps == [1, 2, 3]
    before, skipped, after = record.weights[1], record.weights[2], record.weights[3]
    assert all(torch.equal(skipped[n], before[n]) for n in before)  # step 2 (batches 2 and 3) made no update
    assert all(torch.isfinite(w).all() for w in after.values())
    assert module.nonfinite_steps == 1
    assert not torch.equal(after["conv_in.weight"], before["conv_in.weight"])  # the next step trained again


def test_ema_updates_once_per_optimizer_step(tiny_base, tmp_path):
    """Guards against the EMA averaging once per micro-batch (twice per step with accumulation 2, the inner
    micro-batch averaging in the unchanged weights and advancing the warm-up twice as fast)."""
    record, ema = StepWeights(), EMA(decay=0.2, warmup=True)
    fit(tiny_base, tmp_path, 3, batches(3 * ACCUMULATE), [record, ema])
    assert ema.num_updates == 3 and len(record.weights) == 4
    for name, value in by_hand(record.weights, 0.2).items():
        torch.testing.assert_close(ema.shadow[name].double(), value, rtol=0, atol=1e-6, msg=name)


def today_key(step: int, rank: int = 0, seed: int = 0) -> int:
    """The generator seed of optimizer step ``step`` before accumulation had keys of its own."""
    return int.from_bytes(hashlib.sha256(f"{seed}-{step}-{rank}".encode()).digest()[:8], "little")


class Draws(L.Callback):
    """Each training step's generator seed and the noise and timesteps its loss drew."""

    def __init__(self) -> None:
        self.seeds: list[int] = []
        self.draws: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        make, add_noise = pl_module.step_generator, pl_module.noise_scheduler.add_noise

        def recorded_generator(*args, **kwargs):
            generator = make(*args, **kwargs)
            self.seeds.append(generator.initial_seed())
            return generator

        def recorded_add_noise(x0, noise, timesteps):
            self.draws.append((noise.clone(), timesteps.clone()))
            return add_noise(x0, noise, timesteps)

        pl_module.step_generator, pl_module.noise_scheduler.add_noise = recorded_generator, recorded_add_noise


def test_micro_batches_draw_their_own_noise_and_the_first_keeps_its_key(tiny_base, tmp_path):
    """Guards against every micro-batch of a step drawing the same noise and timesteps (the generator was
    keyed on the optimizer step alone), and against the fix changing what runs without accumulation draw."""
    draws = Draws()
    fit(tiny_base, tmp_path, 2, batches(2 * ACCUMULATE, same=True), [draws])
    assert draws.seeds[0::2] == [today_key(0), today_key(1)]  # micro-batch 0: the key it always had
    assert len(set(draws.seeds)) == 4
    for step in range(2):
        (noise0, t0), (noise1, t1) = draws.draws[2 * step], draws.draws[2 * step + 1]
        assert not torch.equal(noise0, noise1) and not torch.equal(t0, t1)

    plain = Draws()  # accumulation 1: one key per step, as before
    fit(tiny_base, tmp_path / "plain", 2, batches(2, same=True), [plain], accumulate=1)
    assert plain.seeds == [today_key(0), today_key(1)]
    assert torch.equal(plain.draws[1][0], draws.draws[2][0]) and torch.equal(plain.draws[1][1], draws.draws[2][1])


class SignalAt(L.Callback):
    """Sends this process ``SIGTERM`` as batch ``index`` starts (inside an accumulation window)."""

    def __init__(self, index: int) -> None:
        self.index = index

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.index:
            os.kill(os.getpid(), signal.SIGTERM)


def test_preemption_inside_a_window_checkpoints_at_its_end_and_resumes_exactly(tiny_base, tmp_path):
    """Guards against preemption checkpointing in the middle of an accumulation window (the window's first
    micro-batch's gradients were lost and the resumed run trained on other windows than an uninterrupted one)."""
    data = batches(4 * ACCUMULATE, same=True)
    straight_ema = EMA(decay=0.5)
    straight = trainable(fit(tiny_base, tmp_path / "straight", 4, data, [straight_ema]))

    with pytest.raises(SystemExit) as stopped:
        fit(tiny_base, tmp_path / "run", 4, data, [EMA(decay=0.5), Preemption(), SignalAt(ACCUMULATE)])
    assert stopped.value.code == 128 + signal.SIGTERM
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True, map_location="cpu")["global_step"] == 2  # the window's end
    resumed_ema = EMA(decay=0.5)
    resumed = trainable(fit(tiny_base, tmp_path / "run", 4, data, [resumed_ema, Preemption()], ckpt_path=str(ckpt)))
    assert resumed_ema.num_updates == straight_ema.num_updates == 4
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)
        torch.testing.assert_close(resumed_ema.shadow[name], straight_ema.shadow[name], rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_ddp_nonfinite_first_micro_batch_on_one_rank_skips_the_step_on_both(tiny_base, tmp_path):
    """2 CPU processes, accumulation 2, only rank 1's first micro-batch of step 1 NaN. Guards against the
    finite second micro-batch clearing the skip: the NaN gradients, all-reduced to both ranks, made every
    weight NaN and every later step non-finite (3 skipped steps counted instead of 1)."""
    config = write_config(tmp_path, tiny_base, devices=2, strategy="ddp", max_steps=4, accumulate_grad_batches=2)
    cfg = yaml.safe_load(config.read_text())
    cfg["trainer"]["callbacks"].append({"class_path": "nonfinite_on_rank.NonFiniteOnRank", "init_args": {
        "out": str(tmp_path / "state"), "rank": 1, "step": 1, "first_micro_batch": True}})
    config.write_text(yaml.safe_dump(cfg))
    env = {"PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = train("fit", "-c", str(config), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    states = [json.loads((tmp_path / "state" / f"rank{i}.json").read_text()) for i in range(2)]
    assert states[0] == states[1]
    assert states[0]["global_step"] == 4 and states[0]["nonfinite_steps"] == 1 and states[0]["ema_updates"] == 3
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
