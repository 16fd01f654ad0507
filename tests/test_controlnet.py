"""ControlNet per frame (issue #36 item 6): ``LatentShiftPipeline(controlnet=...)``, ``conditioning_frames=``,
``ls-video sample --controlnet ... --conditioning-frames ...``, with a tiny random ``ControlNetModel``."""

import json

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel
from PIL import Image

from ls_video.controlnet import edges, prepare_conditioning_frames
from ls_video.errors import UsageError
from ls_video.pipeline import LatentShiftPipeline
from ls_video.video_io import read_video, write_video

F = 4


def tiny_controlnet(unet, seed: int = 1) -> ControlNetModel:
    """A ControlNet copied from ``unet`` (condition embedding x2, the tiny VAE's factor) whose zero-initialised
    output convolutions are randomised, so it changes the U-Net's output."""
    torch.manual_seed(seed)
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    for name, p in cn.named_parameters():
        if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
            torch.nn.init.normal_(p, std=0.5)
    return cn.eval()


@pytest.fixture(scope="module")
def pipe(tiny_base):
    p = LatentShiftPipeline.from_pretrained(tiny_base)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def cn(pipe):
    return tiny_controlnet(pipe.unet)


@pytest.fixture(scope="module")
def cond():
    return np.random.RandomState(0).randint(0, 256, (F, 16, 16, 3)).astype(np.uint8)


def run(p, **kw):
    args = dict(num_frames=F, num_inference_steps=2, guidance_scale=1.0, output_type="latent",
                generator=torch.Generator().manual_seed(0))
    args.update(kw)
    return p("a red square moving left", **args).frames


def capture(cn):
    """Record the ``controlnet_cond`` and sample rows of every ControlNet call."""
    calls = []

    def hook(module, args, kwargs):
        calls.append((kwargs["controlnet_cond"].clone(), args[0].shape[0]))

    return calls, cn.register_forward_pre_hook(hook, with_kwargs=True)


def test_each_frame_row_gets_its_own_condition_with_cfg(pipe, cn, cond):
    """Row ``h·B·F + b·F + f`` of the ControlNet's condition is frame ``f``'s image, for both CFG halves and each
    video; the ControlNet runs on every step. Fails if conditions are tiled per video instead of per frame
    (``repeat`` vs the fold's order), if the negative half gets none, or if one image serves all frames."""
    calls, handle = capture(cn)
    try:
        run(pipe, controlnet=cn, conditioning_frames=cond, guidance_scale=5.0, num_videos_per_prompt=2)
    finally:
        handle.remove()
    assert len(calls) == 2
    expected = torch.from_numpy(cond).permute(0, 3, 1, 2).float() / 255
    for rows, batch in calls:
        assert rows.shape == (2 * 2 * F, 3, 16, 16) and batch == 2 * 2 * F
        for r in range(rows.shape[0]):
            torch.testing.assert_close(rows[r], expected[r % F])


def test_guess_mode_runs_the_controlnet_on_the_prompted_half_only(pipe, cn, cond):
    """With guidance and ``guess_mode``, the ControlNet sees the ``B·F`` prompted rows (diffusers' semantics) and
    the result differs from the default mode. Fails if guess mode is ignored."""
    calls, handle = capture(cn)
    try:
        a = run(pipe, controlnet=cn, conditioning_frames=cond, guidance_scale=5.0, guess_mode=True)
    finally:
        handle.remove()
    assert [b for _, b in calls] == [F, F]
    assert not torch.equal(a, run(pipe, controlnet=cn, conditioning_frames=cond, guidance_scale=5.0))


def test_scale_zero_is_no_controlnet_and_one_frames_condition_moves_that_frame(pipe, cn, cond):
    """Scale 0 equals no ControlNet exactly, scale 1 does not; changing only frame 2's condition changes frame 2
    most (each condition steers its own row; the shift reaches the neighbours a little). Fails if the residuals
    are not scaled, not passed into the U-Net, or paired with the wrong frames."""
    plain = run(pipe)
    assert torch.equal(run(pipe, controlnet=cn, conditioning_frames=cond, controlnet_conditioning_scale=0.0), plain)
    a = run(pipe, controlnet=cn, conditioning_frames=cond)
    assert (a - plain).abs().amax() > 1e-2
    other = cond.copy()
    other[2] = 255 - other[2]
    b = run(pipe, controlnet=cn, conditioning_frames=other)
    per_frame = (a - b).abs().flatten(2).amax(2)[0]
    assert per_frame.argmax() == 2 and per_frame[2] > 1e-2


def test_guidance_window_turns_the_controlnet_off_for_late_steps(pipe, cn, cond):
    """``control_guidance_end=0.5`` of 2 steps runs the ControlNet on the first step only (diffusers'
    ``controlnet_keep``). Fails if the window is ignored."""
    calls, handle = capture(cn)
    try:
        a = run(pipe, controlnet=cn, conditioning_frames=cond, control_guidance_end=0.5)
    finally:
        handle.remove()
    assert len(calls) == 1
    assert not torch.equal(a, run(pipe, controlnet=cn, conditioning_frames=cond))
    assert not torch.equal(a, run(pipe))


def test_inputs_of_every_kind_give_the_same_rows(cond):
    """PIL images, a uint8 array, a float array and a ``(F, 3, H, W)`` tensor are the same condition; a
    different size is resized; one video per generated video is kept apart. Fails on a layout mix-up."""
    args = dict(num_frames=F, num_videos=2, height=16, width=16, device=torch.device("cpu"), dtype=torch.float32)
    ref = prepare_conditioning_frames(cond, **args)
    assert ref.shape == (2 * F, 3, 16, 16)
    pil = [Image.fromarray(f) for f in cond]
    tensor = torch.from_numpy(cond).permute(0, 3, 1, 2).float() / 255
    for other in (pil, cond.astype(np.float32) / 255, tensor):
        torch.testing.assert_close(prepare_conditioning_frames(other, **args), ref)
    big = prepare_conditioning_frames(np.repeat(np.repeat(cond, 2, 1), 2, 2), **args)
    assert big.shape == ref.shape
    per_video = prepare_conditioning_frames(np.stack([cond, 255 - cond]), **args)
    torch.testing.assert_close(per_video[:F], ref[:F])
    torch.testing.assert_close(per_video[F:], 1 - ref[F:])


def test_user_mistakes_are_one_line_errors(pipe, cn, cond):
    """A frame-count mismatch, frames without a ControlNet, a ControlNet without frames and a ControlNet
    whose condition embedding does not match the VAE are ``UsageError``s before any denoising."""
    with pytest.raises(UsageError, match="has 4 frames, the video 3"):
        run(pipe, controlnet=cn, conditioning_frames=cond, num_frames=3)
    with pytest.raises(UsageError, match="needs a controlnet"):
        run(pipe, conditioning_frames=cond)
    with pytest.raises(UsageError, match="needs conditioning_frames"):
        run(pipe, controlnet=cn)
    wrong = ControlNetModel.from_unet(pipe.unet)  # (x8 condition embedding: the tiny VAE is x2)
    with pytest.raises(UsageError, match="downsamples its condition images x8, the VAE x2"):
        run(pipe, controlnet=wrong, conditioning_frames=cond)


def test_controlnet_component_saves_and_reloads(pipe, cn, cond, tiny_base, tmp_path):
    """A pipeline with a ControlNet component (set by assignment, or passed to ``from_pretrained``) saves it in
    ``controlnet/`` and reloads it; the component is used without the call argument. Fails if diffusers'
    ``(None, None)`` config entry of an assigned component is saved, or the component is ignored."""
    expected = run(pipe, controlnet=cn, conditioning_frames=cond)
    p = LatentShiftPipeline.from_pretrained(tiny_base, controlnet=cn)
    p.set_progress_bar_config(disable=True)
    assert torch.equal(run(p, conditioning_frames=cond), expected)
    q = LatentShiftPipeline.from_pretrained(tiny_base)
    q.controlnet = cn
    q.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "model_index.json").read_text())["controlnet"] == ["diffusers",
                                                                                                "ControlNetModel"]
    r = LatentShiftPipeline.from_pretrained(tmp_path / "saved")
    r.set_progress_bar_config(disable=True)
    assert isinstance(r.controlnet, ControlNetModel)
    assert torch.equal(run(r, conditioning_frames=cond), expected)
    assert torch.equal(run(r), run(pipe))  # (a component without frames: plain text-to-video)


def test_edges_outline_a_square():
    """A filled square's edge map is white on its border and black inside and outside."""
    frame = np.zeros((1, 16, 16, 3), np.uint8)
    frame[0, 4:12, 4:12] = 200
    e = edges(frame)[0, ..., 0]
    assert e.shape == (16, 16) and e.dtype == np.uint8
    assert e[4, 8] == 255 and e[8, 3] == 255 and e[8, 8] == 0 and e[0, 0] == 0


def test_sample_cli_with_controlnet_and_edges(pipe, cn, tiny_base, tmp_path):
    """``ls-video sample --controlnet DIR --conditioning-frames clip.mp4 --condition edges`` writes a video
    that the ControlNet changed (scale 0 gives the plain sample); a frame-count mismatch is one line, exit 2."""
    from ls_video.commands.sample import main

    cn.save_pretrained(tmp_path / "cn")
    clip = np.zeros((F, 16, 16, 3), np.uint8)
    for f in range(F):
        clip[f, 4:10, 2 + 2 * f : 8 + 2 * f] = 255
    write_video(tmp_path / "clip.mp4", clip, fps=8)
    base = ["--model", tiny_base, "--prompt", "a red square moving left", "--num-frames", str(F),
            "--num-inference-steps", "2", "--guidance-scale", "3", "--controlnet", str(tmp_path / "cn"),
            "--conditioning-frames", str(tmp_path / "clip.mp4"), "--condition", "edges"]
    videos = {}
    for scale in ("1", "0"):
        assert main([*base, "--controlnet-conditioning-scale", scale, "--out", str(tmp_path / scale)]) == 0
        name = json.loads((tmp_path / scale / "manifest.json").read_text())["samples"][0]["file"]
        videos[scale] = read_video(tmp_path / scale / name)[0]
    assert main(["--model", tiny_base, "--prompt", "a red square moving left", "--num-frames", str(F),
                 "--num-inference-steps", "2", "--guidance-scale", "3", "--out", str(tmp_path / "plain")]) == 0
    plain = next((tmp_path / "plain").glob("*.mp4"))
    assert np.array_equal(read_video(plain)[0], videos["0"])
    assert not np.array_equal(videos["1"], videos["0"])
    assert main([*base[:5], "3", *base[6:], "--out", str(tmp_path / "bad")]) == 2
    for wrong in (["--conditioning-frames", str(tmp_path / "missing.mp4")], ["--controlnet", str(tmp_path / "cn")]):
        with pytest.raises(SystemExit) as exit_:
            main(["--model", tiny_base, "--prompt", "x", *wrong, "--out", str(tmp_path / "bad")])
        assert exit_.value.code == 2


def test_the_steered_unet_call_runs_at_the_clips_frame_count(pipe, cn, cond):
    """``FrameControl`` calls the U-Net, residuals included, inside ``using_frames(unet, F)``: its output is the
    shifted U-Net's (not the frames' independent images), and a ``(B, F, L, D)`` per-frame embedding equals the
    ``(B, L, D)`` one repeated. Fails if the frame-count context does not cover the residual call."""
    from einops import rearrange

    from ls_video.controlnet import FrameControl, prepare_conditioning_frames
    from ls_video.unet import using_frames

    torch.manual_seed(0)
    latents = torch.randn(1, F, 4, 8, 8)
    embeds = pipe.encode_prompt(["a red square"], None, 1, False)
    rows = prepare_conditioning_frames(cond, F, 1, 16, 16, torch.device("cpu"), torch.float32)
    pipe.scheduler.set_timesteps(2)
    t = pipe.scheduler.timesteps[0]
    control = FrameControl(cn, rows, pipe.scheduler.timesteps)
    with torch.no_grad():
        out = control(pipe.unet, latents, t, embeds)
        per_frame = control(pipe.unet, latents, t, embeds[:, None].expand(-1, F, -1, -1))
        x, ts, ctx = rearrange(latents, "b f c h w -> (b f) c h w"), t.expand(F), embeds.expand(F, -1, -1)
        extra = control.residuals(x, ts, ctx, 1.0)
        images = pipe.unet(x, ts, encoder_hidden_states=ctx, **extra).sample
        with using_frames(pipe.unet, F):
            video = pipe.unet(x, ts, encoder_hidden_states=ctx, **extra).sample
    torch.testing.assert_close(out[0], video)
    torch.testing.assert_close(per_frame, out)
    assert (out[0] - images).abs().amax() > 1e-3
