"""The Trainer options of docs/TRAINING.md ("## Trainer options"): refusals before step 1 in one line, and the
supported options no other test covers."""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers.logger import DummyLogger
from lightning.pytorch.strategies import ModelParallelStrategy, SingleDeviceStrategy
from test_accumulation import NanMicroBatch, StepWeights, batches, today_key, trainable

from ls_video.errors import UsageError
from ls_video.module import LatentShiftModule
from ls_video.optim import OptimConfig
from ls_video.trainer_options import check_precision_request, check_trainer

ROOT = Path(__file__).resolve().parents[1]


def trainer(**kw) -> L.Trainer:
    kw = {"accelerator": "cpu", "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
          "enable_checkpointing": False, **kw}
    return L.Trainer(**kw)


class OtherLogger(DummyLogger):
    """A logger no test covers (as MLFlowLogger, CometLogger, ... are)."""


class FSDPStrategy(SingleDeviceStrategy):
    """Named as Lightning's FSDP1 strategy, which needs a GPU to be built (and DeepSpeed an install)."""


@pytest.mark.parametrize("options,message", [
    ({"precision": "64-true"}, "precision 64-true is not supported"),
    ({"precision": "64"}, "precision 64-true is not supported"),
    ({"precision": "bf16-true"}, "precision bf16-true is not supported"),
    ({"precision": "16-true"}, "precision 16-true is not supported"),
    ({"strategy": "ddp_spawn", "devices": 2}, "ddp_spawn is not supported"),
    ({"strategy": "ddp_fork", "devices": 2}, "ddp_fork is not supported"),
    ({"strategy": FSDPStrategy(torch.device("cpu"))}, "FSDPStrategy is not supported"),
    ({"strategy": ModelParallelStrategy(), "devices": 2, "gradient_clip_val": 1.0, "gradient_clip_algorithm": "value"},
     "gradient_clip_algorithm value is not supported with ModelParallelStrategy"),
    ({"logger": OtherLogger()}, "OtherLogger is not supported"),
    ({"limit_test_batches": 2}, "limit_test_batches has no effect"),
    ({"limit_predict_batches": 0.5}, "limit_predict_batches has no effect"),
    ({"enable_checkpointing": True, "callbacks": [ModelCheckpoint(train_time_interval=datetime.timedelta(hours=1))]},
     "train_time_interval is not supported"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_unsupported_trainer_options_are_refused(options, message):
    """Guards against the options that fail mid-step with a traceback (the ``*-true`` precisions: the frozen
    parts stay fp32) or that nothing tests being accepted silently."""
    with pytest.raises(UsageError, match=message):
        check_trainer(trainer(**options))


@pytest.mark.parametrize("precision,accelerator,message", [
    ("16-mixed", "cpu", "needs a CUDA GPU"), (16, "cpu", "needs a CUDA GPU"),
    ("transformer-engine", "auto", "Transformer Engine"), ("transformer-engine-float16", "cpu", "Transformer Engine"),
])
def test_precisions_that_cannot_run_are_refused_as_written(precision, accelerator, message):
    """Guards against ``16-mixed`` on a CPU silently training in bf16 (Lightning's substitution) and against
    Transformer Engine precisions, which cannot run the U-Net's convolutions in FP8."""
    with pytest.raises(UsageError, match=message):
        check_precision_request(precision, accelerator)
    for fine in ("32-true", "32", "bf16-mixed", None):
        check_precision_request(fine, accelerator)


def test_supported_options_pass_the_check():
    """The supported rows are not refused (a check that refused everything would pass the tests above)."""
    for options in ({}, {"precision": "bf16-mixed"}, {"strategy": "ddp", "devices": 2},
                    {"gradient_clip_val": 1.0, "gradient_clip_algorithm": "value"}, {"detect_anomaly": True},
                    {"enable_checkpointing": True,
                     "callbacks": [ModelCheckpoint(every_n_train_steps=2, save_top_k=-1)]}):
        check_trainer(trainer(**options))


def test_refused_precision_stops_the_cli_before_step_one_in_one_line(tiny_base, tmp_path):
    """Guards against ``--trainer.precision 64-true`` reaching step 1 and ending in a dtype-mismatch traceback."""
    r = subprocess.run([sys.executable, "train.py", "fit", "--model.pretrained_model_name_or_path", tiny_base,
                        "--data.class_path", "ls_video.datamodules.LatentVideoDataModule",
                            "--data.init_args.train_urls",
                        "x.tar", "--trainer.accelerator", "cpu", "--trainer.precision", "64-true",
                        "--trainer.default_root_dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "precision 64-true is not supported" in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) <= 3 and "precision 64-true" in lines[-1], r.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_refused_precision_stops_a_python_fit_before_step_one(tiny_base, tmp_path):
    """The same refusal from Python (``LatentShiftModule.setup``): before, a traceback at the first forward."""
    module = LatentShiftModule(tiny_base)
    with pytest.raises(UsageError, match="64-true"):
        trainer(precision="64-true", max_steps=1, default_root_dir=tmp_path).fit(
            module, torch.utils.data.DataLoader(batches(1), batch_size=None))


def fit(tiny_base, tmp_path, callbacks=(), **kw) -> tuple[LatentShiftModule, L.Trainer]:
    torch.manual_seed(0)
    module = LatentShiftModule(tiny_base, optim=OptimConfig(warmup_steps=0, learning_rate=1e-2))
    t = trainer(default_root_dir=tmp_path, limit_val_batches=0, callbacks=list(callbacks), **kw)
    t.fit(module, torch.utils.data.DataLoader(batches(8), batch_size=None))
    return module, t


class ClippedGrads(L.Callback):
    """The gradients' total norm and largest entry as the optimizer saw them (after clipping)."""

    def __init__(self) -> None:
        self.norms: list[float] = []
        self.maxima: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:  # (the gradients stay until the next window)
            return
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        self.maxima.append(float(max(g.abs().max() for g in grads)))


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_gradient_clipping_with_accumulation(tiny_base, tmp_path, algorithm):
    """Supported row: the accumulated gradients of each optimizer step are clipped (shows the row true; it
    would fail if the non-finite guard's hook or the accumulation window bypassed the clipping)."""
    clip = 1e-4
    grads = ClippedGrads()
    fit(tiny_base, tmp_path, [grads], max_steps=2, accumulate_grad_batches=2, gradient_clip_val=clip,
        gradient_clip_algorithm=algorithm)
    assert len(grads.norms) == 2
    if algorithm == "norm":
        assert all(n == pytest.approx(clip, rel=1e-3) for n in grads.norms)
    else:
        assert all(m == pytest.approx(clip, rel=1e-6) for m in grads.maxima) and min(grads.norms) > clip


def test_bf16_mixed_on_cpu_with_accumulation_skips_a_nonfinite_micro_batch(tiny_base, tmp_path):
    """Supported row (bf16-mixed on a CPU, 3 steps, accumulation 2). Guards against a non-finite first
    micro-batch reaching AdamW under bf16-mixed (no gradient scaler): every weight became NaN."""
    record = StepWeights()
    module, _ = fit(tiny_base, tmp_path, [record, NanMicroBatch(2)], max_steps=3, accumulate_grad_batches=2,
                    precision="bf16-mixed")
    assert all(torch.equal(record.weights[2][n], w) for n, w in record.weights[1].items())
    assert all(torch.isfinite(w).all() for w in trainable(module).values()) and module.nonfinite_steps == 1


class Seeds(L.Callback):
    def __init__(self) -> None:
        self.seeds: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seeds.append(pl_module.step_generator().initial_seed())


def test_limit_train_batches_with_a_partial_window_at_the_epoch_end(tiny_base, tmp_path):
    """Supported row (``limit_train_batches``, ``max_epochs``). Guards against an epoch's last, short window
    (3 batches, accumulation 2: Lightning steps after one micro-batch) leaving the micro-batch count off: the
    next epoch's first micro-batch would not get its step's plain key."""
    seeds = Seeds()
    _, t = fit(tiny_base, tmp_path, [seeds], max_steps=-1, max_epochs=2, limit_train_batches=3,
               accumulate_grad_batches=2)
    assert t.global_step == 4
    assert [seeds.seeds[i] for i in (0, 2, 3, 5)] == [today_key(s) for s in range(4)]
    assert seeds.seeds[1] not in seeds.seeds[:1] + seeds.seeds[2:] and seeds.seeds[4] not in seeds.seeds[:4]


def test_detect_anomaly_trains(tiny_base, tmp_path):
    """Supported row (``detect_anomaly``): autograd's anomaly mode runs the module's steps."""
    module, t = fit(tiny_base, tmp_path, max_steps=1, detect_anomaly=True)
    assert t.global_step == 1 and all(torch.isfinite(w).all() for w in trainable(module).values())


@pytest.mark.gpu
def test_16_mixed_on_a_gpu_with_accumulation_skips_a_nonfinite_micro_batch(tiny_base, tmp_path):
    """Supported row (16-mixed, CUDA). The gradient scaler has unscaled and inspected the gradients before the
    non-finite guard runs; guards against a skipped window's update reaching the weights all the same."""
    record = StepWeights()
    module, _ = fit(tiny_base, tmp_path, [record, NanMicroBatch(2)], max_steps=3, accumulate_grad_batches=2,
                    precision="16-mixed", accelerator="cuda", devices=1)
    assert all(torch.equal(record.weights[2][n], w) for n, w in record.weights[1].items())
    assert all(torch.isfinite(w).all() for w in trainable(module).values()) and module.nonfinite_steps == 1


def test_checkpoint_options_with_accumulation(tiny_base, tmp_path):
    """Supported rows (``every_n_train_steps``, ``save_top_k``, ``monitor``/``mode``, ``save_last``, ``dirpath``,
    ``filename``) under accumulation 2: checkpoints are written at optimizer steps only (each at a window's
    end, so a resume never splits one), the best ``save_top_k`` by ``val/loss`` kept beside ``last.ckpt``."""
    torch.manual_seed(0)
    module = LatentShiftModule(tiny_base, optim=OptimConfig(warmup_steps=0, learning_rate=1e-2))
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="step{step}", every_n_train_steps=1,
                                 save_top_k=2, monitor="val/loss", mode="min", save_last=True)
    t = trainer(default_root_dir=tmp_path, max_steps=3, accumulate_grad_batches=2, val_check_interval=2,
                limit_val_batches=1, enable_checkpointing=True, callbacks=[checkpoint])
    t.fit(module, torch.utils.data.DataLoader(batches(8), batch_size=None),
          torch.utils.data.DataLoader(batches(1), batch_size=None))
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert len(files) == 3 and "last.ckpt" in files, files
    for name in files:
        state = torch.load(tmp_path / "ckpt" / name, weights_only=True, map_location="cpu")
        ready = state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["ready"]
        assert ready == 2 * state["global_step"], name  # written at the end of a window
    assert checkpoint.best_model_score == min(checkpoint.best_k_models.values())
