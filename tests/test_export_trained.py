"""Export writes what was trained, and every command reads the same weights of a checkpoint.

Guards against ``pipeline_from_checkpoint`` rebuilding the scheduler from the base (a ``v_prediction`` override
exported as ``epsilon``: every video sampled from the export wrong) and against ``ls-video sample --model x.ckpt``
using the raw weights while ``ls-video export`` used the EMA ones (one checkpoint, two models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from shipped import run, shipped_toy, write

from ls_video.checkpoint import EMA_KEY, load_checkpoint, load_pipeline, unet_state_from_checkpoint
from ls_video.commands.export import export

pytestmark = pytest.mark.slow  # (a 2-step training run, ~30 s, then an export and sampling: ~65 s in all)


@pytest.fixture(scope="module")
def v_run(tiny_base, tmp_path_factory) -> Path:
    """``last.ckpt`` of 2 steps of the shipped toy config (EMA on) with ``--model.objective.prediction_type
    v_prediction``, on the tiny (epsilon) base."""
    tmp = tmp_path_factory.mktemp("v_run")
    cfg = shipped_toy(tmp, tiny_base, max_steps=2)
    r = run("fit", "-c", str(write(cfg, tmp / "config.yaml")), "--model.objective.prediction_type", "v_prediction",
            timeout=480)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp / "run" / "checkpoints" / "last.ckpt"


def sample(pipe, seed: int = 0) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    return pipe(["a red square moving left"], num_frames=3, num_inference_steps=3, guidance_scale=2.0,
                generator=torch.Generator().manual_seed(seed), output_type="pt").frames


def test_export_samples_as_the_module_does(v_run, tiny_base, tmp_path):
    """The exported ``scheduler/`` and model card say ``v_prediction``, and sampling the export (raw weights, fixed
    seed) gives the video the module's own pipeline (its training scheduler) gives."""
    from ls_video.module import LatentShiftModule
    from ls_video.pipeline import LatentShiftPipeline

    checkpoint = load_checkpoint(v_run)
    hp = checkpoint["hyper_parameters"]
    assert hp["objective"]["prediction_type"] == "v_prediction"
    out = tmp_path / "export"
    assert export(str(v_run), str(out), ema=False) is False
    config = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert config["prediction_type"] == "v_prediction"
    assert "prediction_type v_prediction" in (out / "README.md").read_text()

    module = LatentShiftModule(tiny_base, temporal=hp["temporal"], objective=hp["objective"])
    module.unet.load_state_dict(unet_state_from_checkpoint(checkpoint, ema=False), strict=False)
    module.eval()
    want = sample(module.pipeline())
    got = sample(LatentShiftPipeline.from_pretrained(out))
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_sample_and_export_read_the_same_weights(v_run, tmp_path, capsys):
    """``sample --model x.ckpt`` (its loader) and ``export`` both take the EMA weights by default, and say so;
    ``--raw`` takes the raw ones for both."""
    from diffusers import UNet2DConditionModel

    checkpoint = load_checkpoint(v_run)
    ema, raw = checkpoint[EMA_KEY], unet_state_from_checkpoint(checkpoint, ema=False)
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)  # (else the test could not tell them apart)

    sampled = load_pipeline(v_run).unet.state_dict()
    said = capsys.readouterr().err
    assert export(str(v_run), str(tmp_path / "e")) is True
    exported = UNet2DConditionModel.from_pretrained(tmp_path / "e" / "unet").state_dict()
    assert all(torch.equal(sampled[k], ema[k]) and torch.equal(exported[k], ema[k]) for k in ema)
    assert f"using EMA weights (decay 0.995) from {v_run}" in said
    assert "weights: EMA (decay 0.995)" in (tmp_path / "e" / "README.md").read_text()

    sampled_raw = load_pipeline(v_run, ema=False).unet.state_dict()
    assert "using raw weights" in capsys.readouterr().err
    export(str(v_run), str(tmp_path / "r"), ema=False)
    exported_raw = UNet2DConditionModel.from_pretrained(tmp_path / "r" / "unet").state_dict()
    assert all(torch.equal(sampled_raw[k], raw[k]) and torch.equal(exported_raw[k], raw[k]) for k in raw)
