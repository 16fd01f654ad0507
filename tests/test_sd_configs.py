"""The shipped Stable Diffusion configs, built and trained as shipped on tiny SD-1.x / SD-2.x-layout bases:
configs/sd15.yaml, and sd15.yaml + sd21-base.yaml, 2 steps with every callback and setting they turn on
(bf16-mixed, gradient clipping, gradient checkpointing, EMA, joint image batches, video logging,
validation), then export and sampling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from shipped import ROOT, run, write

pytestmark = pytest.mark.slow

# What a 2-core CPU cannot run as shipped, switched here and only here. Everything else is the config's.
CPU_SWITCHES = {
    "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 2, "val_check_interval": 2,
                "limit_val_batches": 1, "enable_progress_bar": False},
    "every_n_steps": 2,            # VideoLogger: every 5000 steps -> every 2
    "num_inference_steps": 2,      # VideoLogger: 50 DDIM steps -> 2
    "start_step": 1,               # JointImageVideo: from step 80000 -> from step 1
    "num_workers": 1,              # DataLoader workers: 8 -> 1 (2 for the joint image stream -> 1)
}


def sd2_base(out: Path, vae_from: str) -> str:
    """A tiny SD-2.x-layout folder: v-prediction, linear projections in the transformers, per-block attention
    head counts and a wider text encoder (SD-2's OpenCLIP-H layout in miniature); SD's VAE."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline

    from ls_video.testing.tiny import tiny_unet
    from ls_video.toy.tokenizer import build_tokenizer, text_encoder_for
    from ls_video.toy.world import TOY_WORDS

    torch.manual_seed(1)
    tokenizer = build_tokenizer(TOY_WORDS)
    text_encoder = text_encoder_for(tokenizer, hidden_size=64, hidden_act="gelu")
    unet = tiny_unet(cross_attention_dim=64, use_linear_projection=True, attention_head_dim=(2, 4),
                     upcast_attention=True)
    scheduler = DDIMScheduler.from_pretrained(vae_from, subfolder="scheduler", prediction_type="v_prediction")
    pipe = StableDiffusionPipeline(vae=AutoencoderKL.from_pretrained(vae_from, subfolder="vae"),
                                   text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out)
    return str(out)


def shipped_sd(tmp_path: Path, base: str, shards: dict[str, str], *overlays: str) -> dict:
    """The merged configs (later files override earlier ones, as ``-c a -c b`` does), switched for the CPU."""
    cfg: dict = {}
    for name in ("sd15.yaml", *overlays):
        merge(cfg, yaml.safe_load((ROOT / "configs" / name).read_text()))
    cfg["trainer"].update(CPU_SWITCHES["trainer"], default_root_dir=str(tmp_path / "run"))
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "run")
    for cb in cfg["trainer"]["callbacks"]:
        args = cb.get("init_args", {})
        for key in ("every_n_steps", "num_inference_steps", "start_step", "num_workers"):
            if key in args:
                args[key] = CPU_SWITCHES[key]
    cfg["model"]["pretrained_model_name_or_path"] = base
    cfg["data"]["init_args"].update(train_urls=shards["train"], val_urls=shards["val"],
                                    num_workers=CPU_SWITCHES["num_workers"])
    return cfg


def merge(into: dict, new: dict) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict) and "class_path" not in value:
            merge(into[key], value)
        else:
            into[key] = value


@pytest.fixture(scope="module")
def shards(tiny_base, tmp_path_factory) -> dict[str, str]:
    """16-frame latent shards of toy clips, encoded by the tiny bases' (shared) VAE."""
    from ls_video.datamodules import ToyDataModule
    from ls_video.toy.world import ToyWorld

    data = ToyDataModule(tiny_base, cache_dir=str(tmp_path_factory.mktemp("cache")), num_train_clips=8,
                         num_val_clips=2, world=ToyWorld(size=32, num_frames=16, object_size=4, min_travel=0.4))
    data.prepare_data()
    return {split: str(Path(data.shard_dir(split)) / "shard-000000.tar") for split in ("train", "val")}


@pytest.mark.parametrize("layout", ["sd15", "sd21-base"])
def test_shipped_sd_config_trains_exports_and_samples(tiny_base, shards, tmp_path, layout):
    base = tiny_base if layout == "sd15" else sd2_base(tmp_path / "sd2", tiny_base)
    overlays = () if layout == "sd15" else ("sd21-base.yaml",)
    cfg = shipped_sd(tmp_path, base, shards, *overlays)
    assert cfg["trainer"]["precision"] == "bf16-mixed" and cfg["trainer"]["gradient_clip_val"] == 1.0
    assert cfg["model"]["performance"]["gradient_checkpointing"] is True
    r = run("fit", "-c", str(write(cfg, tmp_path / "config.yaml")), timeout=480)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["callbacks"]["EMA"]["num_updates"] == 2
    assert ckpt["hyper_parameters"]["performance"]["gradient_checkpointing"] is True
    videos = list((tmp_path / "run").rglob("videos/step_000002/*.mp4"))
    assert len(videos) == 3  # the config's three prompts, sampled by VideoLogger at step 2
    out = tmp_path / "exported"
    r = subprocess.run([sys.executable, "-m", "ls_video.commands.export", str(tmp_path / "run/checkpoints/last.ckpt"),
                        str(out)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    scheduler = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    want = "epsilon" if layout == "sd15" else "v_prediction"
    assert scheduler["prediction_type"] == want
    card = (out / "README.md").read_text()  # the model card names the base it was fine-tuned from
    assert "pipeline_tag: text-to-video" in card and f"base_model: {base}" in card
    r = subprocess.run([sys.executable, "sample.py", "--model", str(out), "--prompt", "a red square moving left",
                        "--num-frames", "4", "--num-inference-steps", "2", "--out", str(tmp_path / "s")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(list((tmp_path / "s").glob("*.mp4"))) == 1
