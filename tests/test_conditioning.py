"""Prompt travel, video-to-video and image-to-video on the tiny base (ls_video/conditioning.py)."""

import numpy as np
import pytest
import torch

from ls_video.conditioning import parse_travel, strength_steps
from ls_video.errors import UsageError
from ls_video.pipeline import LatentShiftPipeline
from ls_video.schedulers import make_scheduler
from ls_video.text import encode_prompts

LEFT, RIGHT, UP = "a red square moving left", "a red square moving right", "a blue circle moving up"


@pytest.fixture(scope="module")
def pipe(tiny_base):
    p = LatentShiftPipeline.from_pretrained(tiny_base)
    p.set_progress_bar_config(disable=True)
    return p


def call(p, prompt=LEFT, seed=0, **kw):
    args = dict(num_frames=3, num_inference_steps=2, guidance_scale=1.0, generator=torch.Generator().manual_seed(seed))
    args.update(kw)
    return p(prompt, **args).frames


class Contexts:
    """The ``encoder_hidden_states`` of every U-Net call, and the number of calls (a forward pre-hook)."""

    def __init__(self, unet):
        self.seen = []
        self.handle = unet.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.seen.append(kwargs["encoder_hidden_states"].clone())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def embed(p, text):
    return encode_prompts([text], p.tokenizer, p.text_encoder)[0]


def test_cli_travel_syntax():
    """The ``FRAME:PROMPT|FRAME:PROMPT`` syntax of ``--prompt``; a plain prompt (even with ``:``) stays a string."""
    assert parse_travel(f"0:{LEFT}| 8 : {RIGHT}") == {0: LEFT, 8: RIGHT}
    assert parse_travel("a photo: a cat") == "a photo: a cat"
    with pytest.raises(UsageError, match="not FRAME:PROMPT"):
        parse_travel(f"0:{LEFT}|{RIGHT}")
    with pytest.raises(UsageError, match="twice"):
        parse_travel("0:a|0:b")


@pytest.mark.parametrize("interpolation", ["linear", "hold"])
def test_each_frame_gets_its_interpolated_or_held_embedding(pipe, interpolation):
    """Frame f's U-Net row receives the embedding of the keys around f: linear ``(1-a) E[k0] + a E[k1]`` or held
    ``E[k0]``; after the last key the last one; with CFG the per-frame negatives come first. Fails if the frames
    share one embedding (the old ``repeat_interleave``), if rows are paired with the wrong frames, or if the
    negative travel is dropped."""
    prompt, negative = {0: LEFT, 4: RIGHT}, {0: "", 2: UP}
    with Contexts(pipe.unet) as ctx:
        call(pipe, prompt, num_frames=6, num_inference_steps=1, guidance_scale=2.0, negative_prompt=negative,
             prompt_interpolation=interpolation)
    (seen,) = ctx.seen
    assert seen.shape[0] == 2 * 6
    e_left, e_right, e_empty, e_up = (embed(pipe, t) for t in (LEFT, RIGHT, "", UP))
    linear = interpolation == "linear"
    for f in range(6):
        a = min(f, 4) / 4 if linear else float(f >= 4)
        want = (1 - a) * e_left + a * e_right
        torch.testing.assert_close(seen[6 + f], want, rtol=1e-5, atol=1e-6)
        b = min(f, 2) / 2 if linear else float(f >= 2)
        torch.testing.assert_close(seen[f], (1 - b) * e_empty + b * e_up, rtol=1e-5, atol=1e-6)
    assert torch.equal(seen[6 + 4], e_right) and torch.equal(seen[6 + 0], e_left)  # key frames: exactly their own


def test_linear_travel_is_diffusers_free_noise_interpolation():
    """The same dict means the same per-frame embeddings as in diffusers' FreeNoise: its ``_lerp`` between
    consecutive keys, the last key held to the end (fails on an off-by-one in the blend weight)."""
    from diffusers.pipelines.free_noise_utils import AnimateDiffFreeNoiseMixin

    from ls_video.conditioning import travel_embeddings

    e = torch.randn(3, 4, 5)
    ours = travel_embeddings([0, 3, 7], e, 10, "linear")
    lerp = AnimateDiffFreeNoiseMixin._lerp
    theirs = torch.cat([lerp(None, 0, 3, e[:1], e[1:2]), lerp(None, 3, 7, e[1:2], e[2:])[1:],
                        lerp(None, 7, 9, e[2:], e[2:])[1:]])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_one_key_dict_is_the_plain_prompt_exactly(pipe, guidance_scale):
    """``{0: p}`` (and ``{1: p}``: frames before the first key hold it) gives bit-identical videos to ``p``, with
    and without CFG: the per-frame path changes nothing when all frames share their prompt."""
    plain = call(pipe, LEFT, guidance_scale=guidance_scale)
    assert np.array_equal(call(pipe, {0: LEFT}, guidance_scale=guidance_scale), plain)
    assert np.array_equal(call(pipe, {1: LEFT}, guidance_scale=guidance_scale, negative_prompt={0: ""}), plain)
    assert not np.array_equal(call(pipe, {0: LEFT, 2: UP}, guidance_scale=guidance_scale), plain)


def test_travel_in_a_batch_and_bad_keys(pipe):
    """A list mixing strings and dicts gives one video each, in order; keys outside the clip are one-line errors."""
    seeds = [torch.Generator().manual_seed(0) for _ in range(4)]  # the same noise in every row
    both = call(pipe, [LEFT, {0: LEFT, 2: UP}], num_videos_per_prompt=2, output_type="pt", generator=seeds)
    assert both.shape == (4, 3, 3, 16, 16)
    torch.testing.assert_close(both[0], both[1], rtol=0, atol=0)
    torch.testing.assert_close(both[2], call(pipe, {0: LEFT, 2: UP}, output_type="pt")[0], rtol=1e-4, atol=1e-4)
    assert not torch.equal(both[0], both[2])
    with pytest.raises(UsageError, match=r"frame 3 is not a frame index in \[0, 2\]"):
        call(pipe, {0: LEFT, 3: UP})
    with pytest.raises(UsageError, match="prompt_interpolation"):
        call(pipe, {0: LEFT}, prompt_interpolation="cubic")


def vae_round_trip(p, frames):
    """(F, 3, H, W) in [0, 1] -> decoded VAE mean, (F, H, W, 3) numpy."""
    with torch.no_grad():
        out = p.vae.decode(p.vae.encode(frames * 2 - 1).latent_dist.mean).sample
    return (out / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def clip():
    """Five 16x16 frames of a square moving right, as uint8 (what ``read_video`` gives)."""
    frames = np.zeros((5, 16, 16, 3), np.uint8)
    for f in range(5):
        frames[f, 5:11, 2 * f : 2 * f + 6, 0] = 255
    return frames


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpm"])
def test_video_strength_zero_is_the_vae_round_trip_and_one_ignores_the_video(pipe, clip, scheduler):
    """Strength 0 returns the input through the VAE (encode, decode), whatever the steps; strength 1 is text-to-video
    from the same seed's noise, bit for bit, whatever the video; between, the video matters. The length and size
    come from the video (16 frames are asked for, 5 given)."""
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    zero = call(pipe, video=clip, strength=0.0, num_frames=16, num_inference_steps=4)
    assert zero.shape == (1, 5, 16, 16, 3)
    expected = vae_round_trip(pipe, torch.from_numpy(clip).permute(0, 3, 1, 2).float() / 255)
    np.testing.assert_allclose(zero[0], expected, atol=1e-4)
    text = call(pipe, num_frames=5, num_inference_steps=3)
    assert np.array_equal(call(pipe, video=clip, strength=1.0, num_inference_steps=3), text)
    assert np.array_equal(call(pipe, video=clip[::-1].copy(), strength=1.0, num_inference_steps=3), text)
    half = call(pipe, video=clip, strength=0.5, num_inference_steps=4)
    assert np.isfinite(half).all() and not np.array_equal(half, text)
    assert not np.array_equal(half, call(pipe, video=clip[::-1].copy(), strength=0.5, num_inference_steps=4))


@pytest.mark.parametrize("steps,strength,runs", [(10, 0.25, 3), (7, 0.3, 2), (4, 1.0, 4), (4, 0.0, 0), (10, 0.7, 7)])
def test_video_runs_the_strengths_share_of_steps(pipe, clip, steps, strength, runs):
    """The U-Net runs ``num_inference_steps * strength`` times, rounded to the nearest (halves up); fails on a
    truncating count (``int(10 * 0.25) == 2``) or on a loop over all timesteps."""
    pipe.scheduler = make_scheduler("euler", pipe.scheduler.config)
    assert strength_steps(steps, strength) == runs
    with Contexts(pipe.unet) as ctx:
        out = call(pipe, video=clip[:2], strength=strength, num_inference_steps=steps)
    assert len(ctx.seen) == runs and out.shape == (1, 2, 16, 16, 3)


def test_video_inputs_and_errors(pipe, clip):
    """PIL frames, float arrays and (F, 3, H, W) tensors are the same video; a resized output size is allowed;
    a strength outside [0, 1] or a wrong layout is a one-line error."""
    from PIL import Image

    a = call(pipe, video=clip, strength=0.5)
    assert np.array_equal(call(pipe, video=[Image.fromarray(f) for f in clip], strength=0.5), a)
    tensor = torch.from_numpy(clip).permute(0, 3, 1, 2) / 255.0
    np.testing.assert_allclose(call(pipe, video=tensor, strength=0.5), a, atol=1e-6)
    assert call(pipe, video=clip, strength=0.5, height=32, width=48).shape == (1, 5, 32, 48, 3)
    with pytest.raises(UsageError, match=r"strength must be in \[0, 1\]"):
        call(pipe, video=clip, strength=1.5)
    with pytest.raises(UsageError, match=r"\(F, H, W, 3\)"):
        call(pipe, video=clip[..., :2])


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpm"])
def test_image_first_and_last_frames_are_kept(pipe, clip, scheduler):
    """The decoded first (and last) frame equals the VAE round trip of the given image, and the final latents of
    those frames are exactly the image latents, with any scheduler, with CFG, and with video-to-video; the
    frames between are generated (not copies). Fails if the frames are only set at the start (denoising would
    move them) or never."""
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    first, last = clip[0], clip[4]
    out = call(pipe, image=first, last_image=last, num_frames=6, num_inference_steps=3, guidance_scale=2.0)
    assert out.shape == (1, 6, 16, 16, 3)
    trip = vae_round_trip(pipe, torch.from_numpy(np.stack([first, last])).permute(0, 3, 1, 2).float() / 255)
    np.testing.assert_allclose(out[0, 0], trip[0], atol=1e-4)
    np.testing.assert_allclose(out[0, 5], trip[1], atol=1e-4)
    assert np.abs(out[0, 2] - trip[0]).max() > 1e-2
    only_first = call(pipe, image=first, num_frames=4, num_videos_per_prompt=2, output_type="latent")
    from ls_video.conditioning import encode_frames, to_frames

    known = encode_frames(pipe.vae, to_frames(first, "image"), 16, 16)[0]
    h = 16 // pipe.vae_scale_factor
    assert only_first.shape == (2, 4, pipe.unet.config.in_channels, h, h)
    assert torch.equal(only_first[0, 0], known) and torch.equal(only_first[1, 0], known)
    with_video = call(pipe, video=clip, strength=0.6, image=clip[2], num_inference_steps=4)
    np.testing.assert_allclose(with_video[0, 0], vae_round_trip(pipe, to_frames(clip[2], "image"))[0], atol=1e-4)


def test_cli_travel_image_and_video(tiny_base, clip, tmp_path):
    """``ls-video sample`` (in-process) runs each mode: a travel prompt with first and last images, and a video
    with a strength (its length and size become the output's); the manifest names the inputs."""
    import json

    from PIL import Image

    from ls_video.commands.sample import main
    from ls_video.video_io import read_video, write_video

    Image.fromarray(clip[0]).save(tmp_path / "first.png")
    Image.fromarray(clip[4]).save(tmp_path / "last.png")
    write_video(tmp_path / "in.mp4", clip, fps=8)
    base = ["--model", tiny_base, "--num-inference-steps", "2", "--device", "cpu"]
    runs = {"i2v": ["--prompt", f"0:{LEFT}|3:{RIGHT}", "--prompt-interpolation", "hold", "--num-frames", "4",
                    "--image", str(tmp_path / "first.png"), "--last-image", str(tmp_path / "last.png")],
            "v2v": ["--prompt", LEFT, "--video", str(tmp_path / "in.mp4"), "--strength", "0.5"]}
    for name, args in runs.items():
        assert main([*base, *args, "--out", str(tmp_path / name)]) == 0
        (sample,) = json.loads((tmp_path / name / "manifest.json").read_text())["samples"]
        frames, _ = read_video(tmp_path / name / sample["file"])
        assert frames.shape == ((4, 16, 16, 3) if name == "i2v" else (5, 16, 16, 3))
    assert sample["strength"] == 0.5 and sample["video"].endswith("in.mp4")


@pytest.mark.parametrize("args,msg", [
    (["--strength", "0.5"], "--strength needs --video"),
    (["--video", "missing.mp4"], "--video not found"),
    (["--prompt", "0:a|b"], "not FRAME:PROMPT"),
])
def test_cli_errors_are_one_line(args, msg, capsys):
    from ls_video.commands.sample import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--model", "m", "--prompt", "x", "--out", "o", *args])
    assert msg in capsys.readouterr().err
