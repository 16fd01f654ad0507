import numpy as np
import pytest
import torch

from ls_video.pipeline import LatentShiftPipeline
from ls_video.schedulers import make_scheduler
from ls_video.unet import TemporalConfig, apply_temporal_mixing, get_temporal_config


@pytest.fixture()
def pipe(tiny_base):
    p = LatentShiftPipeline.from_pretrained(tiny_base)
    p.set_progress_bar_config(disable=True)
    return p


def run(p, seed=0, **kw):
    args = dict(num_frames=3, num_inference_steps=2, generator=torch.Generator().manual_seed(seed))
    args.update(kw)
    return p("a red square moving left", **args).frames


def test_plain_sd_folder_gets_the_shift(pipe):
    assert get_temporal_config(pipe.unet) == TemporalConfig()


@pytest.mark.parametrize("name", ["ddim", "dpm", "euler"])
def test_schedulers_shape_range_and_seed(pipe, name):
    pipe.scheduler = make_scheduler(name, pipe.scheduler.config)
    a = run(pipe)
    assert a.shape == (1, 3, 16, 16, 3)
    assert a.min() >= 0 and a.max() <= 1 and np.isfinite(a).all()
    assert np.array_equal(a, run(pipe))
    assert not np.array_equal(a, run(pipe, seed=1))


def test_output_types_and_batching(pipe):
    pt = pipe(["a red square", "a blue circle"], num_frames=2, num_inference_steps=1, output_type="pt",
              num_videos_per_prompt=2).frames
    assert pt.shape == (4, 2, 3, 16, 16)
    pil = pipe("a red square", num_frames=2, num_inference_steps=1, output_type="pil").frames
    assert len(pil) == 1 and len(pil[0]) == 2 and pil[0][0].size == (16, 16)


def test_one_frame_is_an_image_and_chunked_decode_matches(pipe):
    img = run(pipe, num_frames=1, height=24, width=32)
    assert img.shape == (1, 1, 24, 32, 3)
    a = run(pipe, decode_chunk_size=1)
    b = run(pipe, decode_chunk_size=64)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_guidance_is_the_affine_mix_of_the_negative_and_the_prompt(pipe):
    """One DDIM step is affine in the U-Net's prediction, so the latents at guidance ``g`` must be affine in
    ``g`` and meet the unguided ones (``g = 1``) there; with the prompt as its own ``negative_prompt``
    guidance is a no-op at any ``g``, while another negative changes the result. Fails if ``chunk``'s order
    is swapped (``cond + g * (uncond - cond)``), if ``negative_prompt`` is ignored, or if the negatives
    and the prompts are paired wrongly."""
    pipe.scheduler = make_scheduler("ddim", pipe.scheduler.config)
    prompt = "a red square moving left"

    def latents(g, negative_prompt=None):
        return pipe(prompt, num_frames=3, num_inference_steps=1, guidance_scale=g, negative_prompt=negative_prompt,
                    output_type="latent", generator=torch.Generator().manual_seed(0)).frames

    unguided, two, three = latents(1.0), latents(2.0), latents(3.0)
    assert (two - unguided).abs().max() > 1e-4
    torch.testing.assert_close(three - two, two - unguided, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(latents(4.0, negative_prompt=prompt), unguided, rtol=1e-4, atol=1e-5)
    assert (latents(2.0, negative_prompt="a blue circle moving up") - two).abs().max() > 1e-4


def test_bad_sizes(pipe):
    with pytest.raises(ValueError, match="divisible"):
        run(pipe, height=15)
    with pytest.raises(ValueError, match="num_frames"):
        run(pipe, num_frames=0)


def test_save_load_round_trip(pipe, tmp_path):
    apply_temporal_mixing(pipe.unet, TemporalConfig("shift", 0.25))
    before = run(pipe)
    pipe.save_pretrained(tmp_path / "exported")
    again = LatentShiftPipeline.from_pretrained(tmp_path / "exported")
    again.set_progress_bar_config(disable=True)
    assert get_temporal_config(again.unet) == TemporalConfig("shift", 0.25)
    np.testing.assert_allclose(before, run(again), atol=1e-6)


def test_pipeline_leaves_the_given_unet_as_it_is(tiny_base):
    """Building a pipeline never installs hooks on the caller's U-Net; from_pretrained shifts its own."""
    from ls_video.components import build_pipeline, load_components

    parts = load_components(tiny_base)
    pipe = build_pipeline(parts)
    assert pipe.unet is parts["unet"] and get_temporal_config(parts["unet"]) is None
    assert get_temporal_config(LatentShiftPipeline.from_pretrained(tiny_base).unet).temporal_mixing == "shift"


def test_build_pipeline_takes_exactly_the_parts(components):
    """One parts type: the tiny preset gives its keys, and a stray or missing key is refused, not dropped."""
    from ls_video.components import PART_NAMES, build_pipeline

    assert tuple(components) == PART_NAMES
    with pytest.raises(ValueError, match=r"unknown parts \['scheduler'\]"):
        build_pipeline({**components, "scheduler": components["noise_scheduler"]})
    with pytest.raises(ValueError, match=r"missing parts \['noise_scheduler'\]"):
        build_pipeline({k: v for k, v in components.items() if k != "noise_scheduler"})
