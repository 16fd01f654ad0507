"""The exported folder's model card: Hub metadata, recipe, scores and sample GIFs from what lies beside it."""

import json

import numpy as np
import torch
import yaml

from ls_video.model_card import write_model_card
from ls_video.video_io import write_video


def test_card_has_hub_metadata_recipe_scores_and_samples(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"global_step": 1500, "hyper_parameters": {
        "pretrained_model_name_or_path": "my/base", "temporal": {"temporal_mixing": "shift", "shift_fraction": 0.125,
                                                               "shift_placement": "residual"},
        "optim": {"learning_rate": 5e-5}}}, ckpt)
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({"data": {
        "class_path": "ls_video.datamodules.LatentVideoDataModule", "init_args": {"batch_size": 2, "num_frames": 16}}}))
    (tmp_path / "metrics.json").write_text(json.dumps({"direction_acc": 0.969, "clipsim": 0.3, "protocol": {}}))
    for i in range(5):
        write_video(tmp_path / f"{i:03d}_clip.mp4", np.zeros((4, 16, 16, 3), np.uint8), fps=8)
    model = tmp_path / "model"
    model.mkdir()
    text = open(write_model_card(str(model), str(ckpt))).read()
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["library_name"] == "diffusers" and meta["pipeline_tag"] == "text-to-video"
    assert meta["base_model"] == "my/base" and {"latent-shift", "text-to-video"} <= set(meta["tags"])
    assert "steps: 1500" in text and "shift fraction 0.125" in text and "16 frames" in text
    assert "| direction_acc | 0.969 |" in text and "| clipsim | 0.300 |" in text
    gifs = sorted(p.name for p in (model / "samples").glob("*.gif"))
    assert gifs == ["000_clip.gif", "001_clip.gif", "002_clip.gif", "003_clip.gif"]
    assert "](samples/000_clip.gif)" in text and "huggingface-cli upload" in text
