"""CLIPSIM, FVD/FID through the eval CLI, with tiny models made here (no downloads)."""

import json

import numpy as np
import pytest
import torch

from ls_video.commands.eval import main as eval_main
from ls_video.metrics.clipsim import clipsim
from ls_video.metrics.features import Extractor
from ls_video.metrics.toy_net import ToyVideoNet
from ls_video.toy.world import ToyWorld
from ls_video.video_io import write_video


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from ls_video.testing.tiny import save_tiny_clip

    words = ["a", "red", "blue", "square", "circle", "moving", "left", "right"]
    return save_tiny_clip(tmp_path_factory.mktemp("clip"), words)


def toy_videos(n=6, seed=0):
    world = ToyWorld(size=32, num_frames=6, object_size=8)
    clips = world.clips(n, seed=seed)
    return [world.render(c) for c in clips], [c.caption for c in clips]


def test_clipsim_is_a_mean_cosine_and_static_videos_are_fully_consistent(tiny_clip):
    videos, prompts = toy_videos(3)
    out = clipsim(videos, prompts, tiny_clip)
    assert -1.0 <= out["clipsim"] <= 1.0
    assert out["clip_frame_consistency"] < 1.0  # the object moves between frames
    static = [np.repeat(v[:1], 6, axis=0) for v in videos]
    assert clipsim(static, prompts, tiny_clip)["clip_frame_consistency"] == pytest.approx(1.0, abs=1e-5)
    same = clipsim([videos[0]], [prompts[0]], tiny_clip)["clipsim"]
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    model, tok = CLIPModel.from_pretrained(tiny_clip), AutoTokenizer.from_pretrained(tiny_clip)
    proc = AutoImageProcessor.from_pretrained(tiny_clip)
    with torch.no_grad():
        t = model.get_text_features(**tok([prompts[0]], padding="max_length", return_tensors="pt"))
        i = model.get_image_features(pixel_values=proc(images=list(videos[0]), return_tensors="pt").pixel_values)
    t, i = (x if isinstance(x, torch.Tensor) else x.pooler_output for x in (t, i))
    expected = torch.nn.functional.cosine_similarity(i, t).mean().item()
    assert same == pytest.approx(expected, abs=1e-5)


def test_extractors_give_features_of_the_right_shape(tiny_clip, tmp_path):
    videos, _ = toy_videos(3)
    clip = Extractor(tiny_clip)
    assert clip.frame_features(videos).shape == (18, 16) and clip.video_features(videos).shape == (3, 16)
    ToyVideoNet().save(str(tmp_path / "toy"))
    toy = Extractor(str(tmp_path / "toy"))
    assert toy.video_features(videos).shape == (3, 64)
    assert len(toy.protocol["weights_sha256"]) == 16
    with pytest.raises(ValueError, match="clip features"):
        toy.frame_features(videos)


def test_eval_cli_writes_every_metric_with_its_protocol(tiny_clip, tmp_path, capsys):
    videos, prompts = toy_videos(6)
    rows = []
    for i, (video, prompt) in enumerate(zip(videos, prompts, strict=True)):
        write_video(tmp_path / f"{i}.mp4", video)
        rows.append({"prompt": prompt, "seed": i, "file": f"{i}.mp4"})
    (tmp_path / "manifest.json").write_text(json.dumps({"samples": rows}))
    ToyVideoNet().save(str(tmp_path / "toynet"))
    rc = eval_main([str(tmp_path), "--metrics", "motion,clipsim,fvd,fid", "--clip-model", tiny_clip,
                    "--fvd-model", str(tmp_path / "toynet"), "--reference", "toy"])
    assert rc == 0
    result = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("direction_acc", "clipsim", "clip_frame_consistency", "fvd", "fid"):
        assert isinstance(result[key], float)
    assert result["fvd"] >= 0 and result["fid"] >= 0
    proto = result["protocol"]
    assert proto["fvd"]["reference"].startswith("toy world") and proto["fid"]["model_type"] == "clip"
    assert "fvd" in capsys.readouterr().out
    # the samples against themselves: distance 0
    rc = eval_main([str(tmp_path), "--metrics", "fvd", "--fvd-model", str(tmp_path / "toynet"),
                    "--reference", str(tmp_path)])
    assert rc == 0 and json.loads((tmp_path / "metrics.json").read_text())["fvd"] == pytest.approx(0, abs=1e-6)


def test_eval_cli_missing_model_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "manifest.json").write_text(json.dumps({"samples": []}))
    assert eval_main([str(tmp_path), "--metrics", "clipsim"]) == 2
    assert "needs --clip-model" in capsys.readouterr().err
