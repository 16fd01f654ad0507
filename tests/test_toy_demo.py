import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from diffusers import UNet2DConditionModel

from ls_video.pipeline import LatentShiftPipeline

ROOT = Path(__file__).resolve().parents[1]
# Lines mentioning a warning that the demo's console may show; everything else is a regression.
ALLOWED_WARNINGS: list[str] = []


def test_make_base_recipe_on_a_tiny_budget(tmp_path):
    out = tmp_path / "base"
    r = subprocess.run([sys.executable, "-m", "ls_video.toy.make_base", "--out", str(out), "--vae-steps", "2",
                        "--text-steps", "2", "--unet-steps", "2", "--num-images", "64"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    for sub in ("vae", "text_encoder", "tokenizer", "unet", "scheduler"):
        assert (out / sub).is_dir()
    assert json.loads((out / "model_index.json").read_text())["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert UNet2DConditionModel.from_pretrained(out / "unet").config.sample_size == 8
    pipe = LatentShiftPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    assert pipe("a red square", num_frames=1, num_inference_steps=1).frames.shape == (1, 1, 32, 32, 3)


def test_committed_toy_base_is_a_real_text_to_image_model():
    base = ROOT / "assets" / "toy-base"
    if not (base / "model_index.json").exists():
        pytest.skip("assets/toy-base not present")
    from ls_video.toy.make_base import check_base

    result = check_base(str(base), seeds=4, steps=25)  # the protocol assets/README.md reports
    assert result["color_acc"] >= 0.8 and result["shape_acc"] >= 0.8


def recount(folder: Path, attribute: str) -> float:
    """Share of a sample folder's videos whose tracked object has the prompted ``attribute``."""
    from ls_video.commands.eval import load_samples
    from ls_video.metrics.toy import analyze_video, parse_prompt

    videos, rows = load_samples(str(folder))
    hits = [analyze_video(video)[attribute] == parse_prompt(row["prompt"])[attribute]
            for video, row in zip(videos, rows, strict=True)]
    return sum(hits) / len(hits)


@pytest.mark.slow
def test_demo_steps_on_a_tiny_budget(tiny_base, tmp_path):
    out = tmp_path / "demo"
    extra = ["--data.init_args.cache_dir", str(tmp_path / "cache"), "--data.init_args.num_train_clips", "8",
             "--data.init_args.num_val_clips", "2", "--data.init_args.batch_size", "2",
             "--data.init_args.shard_size", "4", "--trainer.val_check_interval", "2",
             "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false"]
    r = subprocess.run([sys.executable, "-m", "ls_video.commands.demo", "--out", str(out), "--base", tiny_base,
                        "--max-steps", "2", "--num-videos-per-prompt", "1", "--num-inference-steps", "1",
                        "--extra", *extra],
                       cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())["samples"]
    assert len(manifest) == 32 and all((out / s["file"]).exists() for s in manifest)
    assert (out / "contact_sheet.png").exists() and (out / "model" / "unet" / "latent_shift.json").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    # The figures are those of the videos on disk, recounted here from each video's tracked object (fails if the
    # demo scores other videos than it wrote, drops some, or mixes up prompts and files).
    assert metrics["direction_acc"] == pytest.approx(recount(out, "direction")) and "direction_acc" in r.stdout
    assert metrics["color_acc"] == pytest.approx(recount(out, "color"))
    images = json.loads((out / "images" / "manifest.json").read_text())["samples"]  # 8 image prompts x 8 seeds
    assert len(images) == 64 and {s["num_frames"] for s in images} == {1}
    assert metrics["image_n"] == 64 and metrics["image_color_acc"] == pytest.approx(recount(out / "images", "color"))
    assert metrics["base_image_color_acc"] == pytest.approx(recount(out / "base_images", "color"))
    assert metrics["base_image_shape_acc"] == pytest.approx(recount(out / "base_images", "shape"))
    assert "images (one frame): colour" in r.stdout and "base model: colour" in r.stdout
    assert "steps/s" in r.stdout and "== summary" in r.stdout
    console = r.stdout + r.stderr
    stray = [line for line in console.splitlines()
             if re.search(r"warn|💡 Tip", line, re.IGNORECASE) and not any(a in line for a in ALLOWED_WARNINGS)]
    assert not stray, "\n".join(stray)
