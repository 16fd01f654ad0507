"""Issue #19's personalisation: the new toy concepts (purple, triangle), their metric, the recipe."""

import json

import numpy as np
import pytest
import torch

from ls_video.metrics.toy import score
from ls_video.toy.world import (
    ALL_COLORS,
    ALL_SHAPES,
    COLORS,
    DIRECTIONS,
    SHAPES,
    ToyClip,
    ToyWorld,
    new_concept_combos,
    new_concept_prompts,
)


def test_default_world_is_unchanged_by_the_new_concepts():
    world = ToyWorld(size=32, num_frames=6, object_size=8)
    default = [c.key() for c in world.clips(50, "train", seed=0)]
    assert default == [c.key() for c in world.clips(50, "train", seed=0, colors=list(COLORS), shapes=SHAPES)]
    assert "purple" not in COLORS and "triangle" not in SHAPES  # the video data never holds them
    extended = world.clips(300, "train", seed=0, colors=list(ALL_COLORS), shapes=ALL_SHAPES)
    assert {c.color for c in extended} == set(ALL_COLORS) and {c.shape for c in extended} == set(ALL_SHAPES)


def test_new_concept_prompts():
    prompts = new_concept_prompts()
    assert len(new_concept_combos()) == 7 and len(prompts) == 28 == len(set(prompts))
    assert all("purple" in p or "triangle" in p for p in prompts)
    assert "a purple triangle moving up" in prompts and "a red triangle moving left" in prompts


@pytest.mark.parametrize("shape", ALL_SHAPES)
def test_metric_knows_every_colour_and_shape(shape):
    world = ToyWorld(size=32, num_frames=6, object_size=8)
    rng = np.random.default_rng(0)
    videos, prompts = [], []
    for color in ALL_COLORS:
        for direction in DIRECTIONS:
            clip = next(c for c in (world.sample_clip(rng, colors=[color], shapes=[shape]) for _ in range(100))
                        if c.direction == direction)
            videos.append(world.render(clip))
            prompts.append(clip.caption)
    result = score(videos, prompts)
    assert result["color_acc"] == result["shape_acc"] == result["direction_acc"] == result["step_acc"] == 1.0


def test_triangle_is_drawn_apex_up():
    world = ToyWorld(size=32, num_frames=2, object_size=8)
    mask = world.render_frame(ToyClip("triangle", "purple", "left", (4, 4), 1), (4, 4)).max(-1) > 0
    rows = mask.sum(1)[4:12]
    assert list(rows) == sorted(rows) and rows[0] < rows[-1] == 8 and not mask[:4].any() and not mask[12:].any()


def test_personalise_recipe_on_a_tiny_base(tiny_base, tmp_path):
    from transformers import CLIPTextModel, CLIPTokenizer

    from ls_video.pipeline import LatentShiftPipeline
    from ls_video.text import encode_prompts
    from ls_video.toy.personalise import PersonaliseConfig, personalise

    out = str(tmp_path / "personal")
    cfg = PersonaliseConfig(steps=2, batch=4, decoder_steps=1, decoder_batch=2, num_images=16,
                            reconstruction_images=4)
    report = personalise(tiny_base, out, cfg, check_seeds=0)
    assert report["steps_per_s"] > 0 and json.load(open(f"{out}/personalise.json"))["new_token_ids"]
    tok = CLIPTokenizer.from_pretrained(out, subfolder="tokenizer")
    base_tok = CLIPTokenizer.from_pretrained(tiny_base, subfolder="tokenizer")
    ids = tok("a purple triangle moving left").input_ids
    assert len(ids) == 7 and tok.convert_ids_to_tokens(ids[2:4]) == ["purple", "triangle"]
    old = ["a red square moving left", "a blue circle moving up", ""]
    assert tok(old).input_ids == base_tok(old).input_ids
    enc = CLIPTextModel.from_pretrained(out, subfolder="text_encoder")
    base_enc = CLIPTextModel.from_pretrained(tiny_base, subfolder="text_encoder")
    assert enc.get_input_embeddings().weight.shape[0] == len(tok) == len(base_tok) + 2
    # old captions mean exactly what they meant to the base (the video fine-tuning's text side)
    torch.testing.assert_close(encode_prompts(old, tok, enc), encode_prompts(old, base_tok, base_enc), rtol=0, atol=0)
    pipe = LatentShiftPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(["a purple triangle moving left"], num_frames=2, num_inference_steps=2, output_type="np").frames
    assert np.isfinite(np.asarray(frames)).all()


def test_motion_transfer_layer_sets_and_delta_stats(tiny_base, tmp_path):
    import re

    from ls_video.pipeline import LatentShiftPipeline
    from ls_video.toy.motion_transfer import LAYER_SETS, delta_stats

    kv = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    assert re.search(LAYER_SETS["cross-attn k/v"], kv) and not re.search(LAYER_SETS["all but cross-attn k/v"], kv)
    assert re.search(LAYER_SETS["all but cross-attn k/v"], "conv_in.weight")
    pipe = LatentShiftPipeline.from_pretrained(tiny_base)
    with torch.no_grad():
        pipe.unet.conv_in.weight.mul_(1.1)
    pipe.save_pretrained(tmp_path / "moved")
    stats = delta_stats(tiny_base, str(tmp_path / "moved"), tiny_base)
    assert stats["conv/time/other"]["video_rel"] > 0 and stats["resnets"]["video_rel"] == 0
    assert all(s["personal_rel"] == 0 for s in stats.values())
