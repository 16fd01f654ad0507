"""Long videos (one pass, windows, FreeNoise noise) and loops (the circular shift), issue #36 items 1-2."""

import copy
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from ls_video.errors import UsageError
from ls_video.long_video import ContextWindows, reschedule_noise, windowed_forward
from ls_video.pipeline import LatentShiftPipeline
from ls_video.schedulers import make_scheduler
from ls_video.shift import shift_channels, temporal_shift, temporal_shift_
from ls_video.testing.tiny import tiny_unet
from ls_video.unet import TemporalConfig, apply_temporal_mixing, using_frames, video_unet_forward
from ls_video.video_io import read_video

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a red square moving left"


@pytest.fixture()
def pipe(tiny_base):
    p = LatentShiftPipeline.from_pretrained(tiny_base)
    p.set_progress_bar_config(disable=True)
    p.scheduler = make_scheduler("ddim", p.scheduler.config)
    return p


def latents_of(p, num_frames, seed=0, **kw):
    args = dict(num_frames=num_frames, num_inference_steps=2, output_type="latent",
                generator=torch.Generator().manual_seed(seed))
    return p(PROMPT, **{**args, **kw}).frames


def unet_inputs(b=1, f=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, f, 4, 8, 8, generator=g), torch.tensor([500] * b), torch.randn(b, 5, 32, generator=g)


# ----------------------------------------------------------------------------- the circular shift
@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_circular_shift_is_a_roll_of_the_moved_channels(in_place, channels_last):
    """With ``circular=True`` channels [0, n) are ``torch.roll`` by +1 frame, [n, 2n) by -1, the rest kept
    (frame 0 reads the last frame, not zeros); clips in a batch never mix. Guards a loop that zero-pads,
    wraps across clips, or rolls the wrong way."""
    b, f, c = 2, 5, 16
    x = torch.randn(b * f, c, 3, 3)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    n = shift_channels(c, 0.125)
    v = x.view(b, f, c, 3, 3)
    want = torch.cat([v[:, :, :n].roll(1, 1), v[:, :, n : 2 * n].roll(-1, 1), v[:, :, 2 * n :]], 2).reshape(x.shape)
    got = temporal_shift_(x.clone(), f, circular=True) if in_place else temporal_shift(x, f, circular=True)
    assert torch.equal(got, want)
    assert not torch.equal(temporal_shift(x, f), want)  # the open shift zero-pads
    assert torch.equal(temporal_shift(x[:f], 1, circular=True), x[:f])  # one frame: still the identity


def test_circular_shift_gradient_is_the_reverse_roll():
    """The circular shift is a permutation, so its gradient is the inverse permutation (roll back)."""
    f, c = 4, 8
    x = torch.randn(f, c, 2, 2, requires_grad=True)
    y = torch.randn(f, c, 2, 2)
    (temporal_shift(x, f, circular=True) * y).sum().backward()
    n = shift_channels(c, 0.125)
    want = torch.cat([y[:, :n].roll(-1, 0), y[:, n : 2 * n].roll(1, 0), y[:, 2 * n :]], 1)
    assert torch.equal(x.grad, want)


def test_circular_shift_traces_into_one_graph():
    """``torch.compile(fullgraph=True)`` traces the circular form (no graph break) and matches eager, forward
    and gradient."""
    x = torch.randn(8, 16, 3, 3, requires_grad=True)
    compiled = torch.compile(lambda t: temporal_shift(t, 4, circular=True), backend="aot_eager", fullgraph=True)
    out = compiled(x)
    assert torch.equal(out, temporal_shift(x, 4, circular=True))
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    assert torch.equal(grad, torch.autograd.grad(temporal_shift(x, 4, circular=True).square().sum(), x)[0])


@pytest.mark.gpu
@pytest.mark.parametrize("in_place", [False, True])
def test_circular_shift_on_cuda_matches_cpu(in_place):
    """CUDA routes the circular shift to the torch path (the Triton kernels only zero-pad): same values."""
    x = torch.randn(10, 16, 4, 4, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    want = temporal_shift(x.float(), 5, circular=True).half()
    fn = temporal_shift_ if in_place else temporal_shift
    assert torch.equal(fn(x.cuda(), 5, circular=True).cpu(), want)


@pytest.fixture()
def shift_unet():
    torch.manual_seed(0)
    return apply_temporal_mixing(tiny_unet().eval(), TemporalConfig("shift", 0.25))


def test_loop_unet_is_equivariant_to_rolling_frames(shift_unet):
    """A U-Net with the circular shift commutes with rotating the clip's frames (everything else is per
    frame); with the open shift it does not. Fails if the hooks ignore the switch."""
    x, t, ctx = unet_inputs()
    with torch.no_grad():
        out = video_unet_forward(shift_unet, x, t, ctx, circular=True)
        rolled = video_unet_forward(shift_unet, x.roll(2, 1), t, ctx, circular=True)
        torch.testing.assert_close(rolled, out.roll(2, 1), rtol=0, atol=1e-5)
        open_out = video_unet_forward(shift_unet, x, t, ctx)
        open_rolled = video_unet_forward(shift_unet, x.roll(2, 1), t, ctx)
    assert (open_rolled - open_out.roll(2, 1)).abs().max() > 1e-3
    assert (open_out - out).abs().max() > 1e-3


def test_loop_is_per_call_and_per_thread(shift_unet):
    """The switch holds inside ``using_frames`` for its thread only and is off again after the block."""
    x, t, ctx = unet_inputs()
    with torch.no_grad():
        want_open = video_unet_forward(shift_unet, x, t, ctx)
        seen = {}
        inside, leave = threading.Event(), threading.Event()

        def other():
            if inside.wait(30):  # (timeouts: a failing switch must not hang the suite)
                seen["open"] = video_unet_forward(shift_unet, x, t, ctx)  # while the main thread is in a loop
            leave.set()

        thread = threading.Thread(target=other, daemon=True)
        thread.start()
        try:
            with using_frames(shift_unet, 6, circular=True):
                inside.set()
                leave.wait(30)
        finally:
            inside.set()
            thread.join(30)
        assert torch.equal(seen["open"], want_open)
        assert torch.equal(video_unet_forward(shift_unet, x, t, ctx), want_open)


def test_gradient_checkpointing_recomputes_a_loop_as_a_loop(shift_unet):
    """Checkpointed blocks re-run in backward after the call ended: with ``circular=True`` the gradients
    equal those without checkpointing. Fails if the recomputation forgets the switch (open shift)."""
    plain = shift_unet.train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.enable_gradient_checkpointing()
    x, t, ctx = unet_inputs(f=4)
    for unet in (plain, checkpointed):
        video_unet_forward(unet, x, t, ctx, circular=True).square().mean().backward()
    for p, q in zip(checkpointed.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)


def test_loop_refuses_added_layers():
    unet = apply_temporal_mixing(tiny_unet().eval(), TemporalConfig("temporal_conv"))
    with pytest.raises(UsageError, match="loop"):
        using_frames(unet, 4, circular=True)


# ----------------------------------------------------------------------------- windows
def test_window_layout_and_weights_follow_diffusers_free_noise():
    """diffusers' layout (25 frames, 16/4 -> starts 0, 4, 8 and a last window ending at frame 25), loops wrap
    around, every frame is covered; pyramid weights 1..mid..1; bad settings are one-line errors."""
    ctx = ContextWindows(16, 4)
    assert [(w[0], w[-1] + 1) for w in ctx.windows(25)] == [(0, 16), (4, 20), (8, 24), (9, 25)]
    assert ctx.windows(10) == [list(range(10))]
    loop = ContextWindows(4, 2).windows(6, loop=True)
    assert loop == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 0, 1]]
    for num_frames, loop in [(25, False), (64, False), (30, True), (17, True)]:
        covered = {i for w in ContextWindows(8, 3).windows(num_frames, loop) for i in w}
        assert covered == set(range(num_frames))
    assert ContextWindows(4).weights(4).tolist() == [1, 2, 2, 1]
    assert ContextWindows(5).weights(5).tolist() == [1, 2, 3, 2, 1]
    assert ContextWindows(4, weighting_scheme="flat").weights(4).tolist() == [1, 1, 1, 1]
    for bad in [dict(context_length=4, context_stride=5), dict(context_length=0), dict(weighting_scheme="x"),
                dict(noise_type="x")]:
        with pytest.raises(UsageError):
            ContextWindows(**bad)


def test_windowed_forward_blends_the_windows_by_their_weights(shift_unet):
    """One window over the whole clip is the one-pass call exactly; with frames independent (mixing "none")
    any overlap blends equal predictions back to the one-pass ones (weights normalised per frame); with the
    shift, overlapping windows give finite predictions for every frame from calls of at most
    ``context_length`` frames, which differ from one pass (each window is a clip of its own)."""
    x, t, ctx = unet_inputs(b=2, f=10)
    calls = []
    shift_unet.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    with torch.no_grad():
        one_pass = video_unet_forward(shift_unet, x, t, ctx)
        assert torch.equal(windowed_forward(shift_unet, x, t, ctx, ContextWindows(10, 2)), one_pass)
        calls.clear()
        windowed = windowed_forward(shift_unet, x, t, ctx, ContextWindows(4, 2))
        assert calls == [2 * 4] * 4  # starts 0, 2, 4, 6: memory bounded by the window
        assert windowed.shape == one_pass.shape and torch.isfinite(windowed).all()
        assert (windowed - one_pass).abs().amax(dim=(0, 2, 3, 4)).min() > 0  # every frame written by windows
        apply_temporal_mixing(shift_unet, TemporalConfig("none"))
        independent = video_unet_forward(shift_unet, x, t, ctx)
        for scheme in ("pyramid", "flat"):
            blended = windowed_forward(shift_unet, x, t, ctx, ContextWindows(4, 3, scheme))
            torch.testing.assert_close(blended, independent, rtol=1e-5, atol=1e-6)


def test_windowed_loop_is_equivariant_to_rolling_by_the_stride(shift_unet):
    """Loop windows wrap around the end, so the windowed loop commutes with rotating the clip by a multiple
    of the stride (the window set maps onto itself). Fails if the last frames are not blended with the first."""
    x, t, ctx = unet_inputs(f=8)
    with torch.no_grad():
        windows = ContextWindows(4, 2)
        out = windowed_forward(shift_unet, x, t, ctx, windows, loop=True)
        rolled = windowed_forward(shift_unet, x.roll(2, 1), t, ctx, windows, loop=True)
    torch.testing.assert_close(rolled, out.roll(2, 1), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- FreeNoise noise
@pytest.mark.parametrize("num_frames", [40, 42])
def test_shuffle_context_noise_is_a_permutation_of_the_first_window(num_frames):
    """Frames [i, i+stride) for i >= context_length hold the noise of frames [i-L, i-L+stride) in a
    shuffled order, so each frame's noise is one of the first window's frames' noise; the first window is
    kept and the order differs between videos with their own generators."""
    length, stride = 16, 4
    noise = torch.randn(2, num_frames, 4, 2, 2)
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    out = reschedule_noise(noise, ContextWindows(length, stride), gens)
    assert torch.equal(out[:, :length], noise[:, :length])
    first = out[:, :length].flatten(2)
    for b in range(2):
        for i in range(length, num_frames):
            matches = (first[b] == out[b, i].flatten()).all(dim=1).nonzero().flatten().tolist()
            start = i - length - (i - length) % stride  # the block it was drawn from, one window earlier
            source = out[b, start : start + stride].flatten(1)
            assert len(matches) == 1 and (source == out[b, i].flatten()).all(dim=1).any()
        for i in range(length, num_frames - stride + 1, stride):
            block, source = out[b, i : i + stride].flatten(1), out[b, i - length : i - length + stride].flatten(1)
            assert torch.equal(block.sort(0).values, source.sort(0).values)
    orders = [[int((noise[b, :length].flatten(1) == out[b, i].flatten()).all(1).nonzero()) for i in range(16, 24)]
              for b in range(2)]
    assert orders[0] != orders[1]
    repeat = reschedule_noise(noise, ContextWindows(length, stride, noise_type="repeat_context"))
    assert torch.equal(repeat[:, length : 2 * length], noise[:, :length])
    assert reschedule_noise(noise, ContextWindows(length, stride, noise_type="random")) is noise


# ----------------------------------------------------------------------------- the pipeline
def test_64_frames_in_one_pass(pipe):
    """No positional encoding: 64 frames (eight times the toy training length) denoise in one U-Net call."""
    calls = []
    pipe.unet.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    video = pipe(PROMPT, num_frames=64, num_inference_steps=1, guidance_scale=1.0,
                 generator=torch.Generator().manual_seed(0)).frames
    assert video.shape == (1, 64, 16, 16, 3) and np.isfinite(video).all()
    assert calls == [64]


def test_pipeline_windows_noise_and_one_window_equals_one_pass(pipe, monkeypatch):
    """``enable_free_noise`` with a window over the whole clip gives the one-pass latents exactly; with
    overlapping windows every U-Net call holds at most ``context_length`` frames per video (x2 for guidance)
    and the initial noise is FreeNoise's (frames 8.. are a shuffled repeat of the first window)."""
    one_pass = latents_of(pipe, 12)
    pipe.enable_free_noise(context_length=12, context_stride=4)
    assert pipe.free_noise_enabled
    assert torch.equal(latents_of(pipe, 12), one_pass)
    pipe.enable_free_noise(context_length=8, context_stride=4)
    calls = []
    pipe.unet.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    windowed = latents_of(pipe, 12)
    assert windowed.shape == one_pass.shape and torch.isfinite(windowed).all()
    assert set(calls) == {2 * 8}
    seen = {}
    monkeypatch.setattr(pipe, "denoise", lambda latents, *a, **k: seen.setdefault("noise", latents))
    latents_of(pipe, 12)
    noise = seen["noise"][0].flatten(1)
    assert all((noise[:8] == noise[i]).all(1).sum() == 1 for i in range(8, 12))
    pipe.disable_free_noise()
    assert not pipe.free_noise_enabled


def test_loop_pipeline_rotates_with_its_noise_and_off_is_unchanged(pipe):
    """With ``loop=True`` the sampled clip is equivariant to rotating its initial noise along frames (the
    U-Net sees circular neighbours; DDIM, guidance and the timestep are per frame); ``loop=False`` is
    today's sampling (the same latents as without the argument) and not equivariant."""
    noise = torch.randn(1, 6, 4, 8, 8, generator=torch.Generator().manual_seed(3))

    def sample(z, **kw):
        return pipe(PROMPT, num_frames=6, num_inference_steps=2, latents=z, output_type="latent", **kw).frames

    looped, looped_rolled = sample(noise, loop=True), sample(noise.roll(2, 1), loop=True)
    torch.testing.assert_close(looped_rolled, looped.roll(2, 1), rtol=0, atol=1e-4)
    default, off = sample(noise), sample(noise, loop=False)
    assert torch.equal(default, off)
    assert (sample(noise.roll(2, 1)) - default.roll(2, 1)).abs().max() > 1e-2
    assert (looped - default).abs().max() > 1e-2


def test_cli_long_windowed_loop(tiny_base, tmp_path):
    """`ls-video sample --num-frames 12 --context-length 8 --context-stride 4 --loop` writes a 12-frame video."""
    out = tmp_path / "o"
    r = subprocess.run([sys.executable, "sample.py", "--model", tiny_base, "--prompt", PROMPT, "--num-frames", "12",
                        "--context-length", "8", "--context-stride", "4", "--loop", "--num-inference-steps", "1",
                        "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    sample = json.loads((out / "manifest.json").read_text())["samples"][0]
    assert read_video(out / sample["file"])[0].shape[0] == 12
    assert sample["loop"] is True and sample["context_windows"] == dict(
        context_length=8, context_stride=4, weighting_scheme="pyramid", noise_type="shuffle_context")


def test_cli_refuses_windows_that_leave_frames_out(capsys):
    from ls_video.commands.sample import parse_args

    with pytest.raises(SystemExit) as exit_:
        parse_args(["--model", "m", "--prompt", PROMPT, "--context-length", "4", "--context-stride", "5", "--out", "o"])
    assert exit_.value.code == 2
    assert "--context-stride must be between 1 and --context-length" in capsys.readouterr().err


@pytest.mark.slow  # dynamo traces the U-Net twice (about 35 s on a busy 2-core CPU); make test runs it
def test_compiled_unet_follows_the_loop_switch(shift_unet):
    """A ``torch.compile``d U-Net is guarded on the switch: open, loop, open again after compiling give the
    eager results (fails if a graph traced for one setting is replayed for the other)."""
    x, t, ctx = unet_inputs()
    compiled = torch.compile(shift_unet, backend="eager")
    with torch.no_grad():
        for circular in (False, True, False):
            want = video_unet_forward(shift_unet, x, t, ctx, circular=circular)
            assert torch.equal(video_unet_forward(compiled, x, t, ctx, circular=circular), want)


def test_windows_give_each_frame_its_own_prompt_travel_embedding(shift_unet):
    """Per-frame embeddings ``(B, F, L, D)`` (prompt travel) are cut with their frames' window: with frames
    independent, overlapping windows blend back to the one-pass result frame by frame. Fails if every window
    gets the clip's first frames' embeddings (or the whole ``(B, F, L, D)`` tensor, a shape error)."""
    x, t, _ = unet_inputs(f=10)
    per_frame = torch.randn(1, 10, 5, 32, generator=torch.Generator().manual_seed(3))
    apply_temporal_mixing(shift_unet, TemporalConfig("none"))
    with torch.no_grad():
        one_pass = video_unet_forward(shift_unet, x, t, per_frame)
        blended = windowed_forward(shift_unet, x, t, per_frame, ContextWindows(4, 2))
    torch.testing.assert_close(blended, one_pass, rtol=1e-5, atol=1e-6)
