"""Compiled U-Nets: eager's gradients, no stale graphs, compiled sampling equals eager."""

import copy

import pytest
import torch

from ls_video import compile as lsc
from ls_video.components import build_pipeline
from ls_video.testing.tiny import tiny_components, tiny_unet
from ls_video.unet import TemporalConfig, apply_temporal_mixing, video_unet_forward

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def inputs(device="cpu", b=2, f=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, ctx = torch.randn(b, f, 4, 8, 8, generator=g), torch.randn(b, 5, 32, generator=g)
    return x.to(device), torch.tensor([10, 700][:b], device=device), ctx.to(device)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture()
def hook_guards_restored():
    saved = torch._dynamo.config.skip_nnmodule_hook_guards
    yield
    torch._dynamo.config.skip_nnmodule_hook_guards = saved


@pytest.fixture(autouse=True)
def true_fp32():
    """Compare in real fp32 on GPUs: with TF32 convolutions (cuDNN's default) eager and inductor pick
    different algorithms and differ by ~1e-3 relative (seen on an H100), which is not what is tested."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_compiled_training_step_has_eager_gradients(device):
    """Regional compilation (what ``compile_unet`` does), inductor, fp32: every parameter's gradient."""
    torch.manual_seed(0)
    eager = apply_temporal_mixing(tiny_unet().to(device).train(), TemporalConfig("shift", 0.25))
    compiled = copy.deepcopy(eager)
    assert lsc.compile_regions(compiled) > 0
    x, t, ctx = inputs(device)
    for unet in (eager, compiled):
        video_unet_forward(unet, x, t, ctx).square().mean().backward()
    worst = {}
    for (name, p), q in zip(compiled.named_parameters(), eager.parameters(), strict=True):
        assert p.grad is not None, name
        worst[name] = float((p.grad - q.grad).norm() / q.grad.norm().clamp_min(1e-12))
    assert max(worst.values()) < 1e-3, sorted(worst.items(), key=lambda kv: -kv[1])[:5]


def eager_twin_outputs(unet, x, t, ctx):
    with torch.no_grad():
        return video_unet_forward(unet, x, t, ctx)


@pytest.mark.parametrize("how", ["whole", "regions"])
def test_shifted_and_unshifted_compiled_in_one_process(how):
    """Dynamo's guards decide whether a cached graph is reused whatever the backend, so ``eager``
    tests them quickly; without :func:`guard_hooks` the second U-Net ran the first one's graph."""
    x, t, ctx = inputs()
    for mixing in ("none", "shift", "none", "shift"):
        torch.manual_seed(1)
        unet = apply_temporal_mixing(tiny_unet().eval(), TemporalConfig(mixing, 0.25))
        expected = eager_twin_outputs(unet, x, t, ctx)
        if how == "whole":
            lsc.compile_whole(unet, mode=None, backend="eager")
        else:
            lsc.compile_regions(unet, backend="eager")
        torch.testing.assert_close(eager_twin_outputs(unet, x, t, ctx), expected, rtol=0, atol=0)


def test_switching_temporal_mixing_after_compiling():
    x, t, ctx = inputs()
    torch.manual_seed(1)
    unet = apply_temporal_mixing(tiny_unet().eval(), TemporalConfig("shift", 0.25))
    twin = copy.deepcopy(unet)
    lsc.compile_whole(unet, mode=None, backend="eager")
    for config in (TemporalConfig("shift", 0.25), TemporalConfig("none"), TemporalConfig("shift", 0.125),
                   TemporalConfig("shift", 0.25)):
        apply_temporal_mixing(unet, config)
        apply_temporal_mixing(twin, config)
        for frames in (3, 1):
            xf = x[:, :frames]
            torch.testing.assert_close(eager_twin_outputs(unet, xf, t, ctx), eager_twin_outputs(twin, xf, t, ctx),
                                       rtol=0, atol=0)


def test_the_stale_graph_is_real_without_hook_guards(monkeypatch, hook_guards_restored):
    """The trap the guards close: Dynamo's default reuses a graph traced with other hooks."""
    torch._dynamo.config.skip_nnmodule_hook_guards = True
    monkeypatch.setattr("ls_video.unet.guard_hooks", lambda: None)
    x, t, ctx = inputs()
    outputs = {}
    for mixing in ("none", "shift"):
        torch.manual_seed(1)
        unet = apply_temporal_mixing(tiny_unet().eval(), TemporalConfig(mixing, 0.25))
        unet.compile(backend="eager")
        outputs[mixing] = eager_twin_outputs(unet, x, t, ctx)
    assert torch.equal(outputs["none"], outputs["shift"])  # stale: the shifted U-Net ran unshifted


def test_users_own_torch_compile_after_another_unet_is_right(hook_guards_restored):
    """``torch.compile(unet)`` as diffusers' docs show, on a shifted U-Net after a plain one of the same
    config in one process (Dynamo's default, hook guards skipped, as a fresh process has it): installing the
    shift turns the hook guards on, so the shifted U-Net is traced anew (it was off by 67-80% before)."""
    torch._dynamo.config.skip_nnmodule_hook_guards = True  # (restored by the fixture below)
    x, t, ctx = inputs()
    torch.manual_seed(1)
    plain = tiny_unet().eval()
    shifted = copy.deepcopy(plain)
    apply_temporal_mixing(shifted, TemporalConfig("shift", 0.25))
    with torch.no_grad():
        expected = video_unet_forward(shifted, x, t, ctx)
        video_unet_forward(torch.compile(plain, backend="eager"), x, t, ctx)
        got = video_unet_forward(torch.compile(shifted, backend="eager"), x, t, ctx)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_compiled_pipeline_matches_eager(device):
    """``compile_unet()`` (the same as ``compile=True``): inductor on CPU, CUDA graphs on a GPU."""
    parts = tiny_components(seed=0)
    eager = build_pipeline(parts).to(device)
    compiled = build_pipeline({**parts, "unet": copy.deepcopy(parts["unet"])}).to(device)
    compiled.compile_unet()
    kw = dict(num_frames=3, num_inference_steps=3, guidance_scale=4.0, output_type="pt")
    for pipe in (eager, compiled):
        pipe.set_progress_bar_config(disable=True)
    expected = eager("a red square moving left", generator=torch.Generator().manual_seed(0), **kw).frames
    for _ in range(3):  # compile, record the CUDA graph, replay it
        got = compiled("a red square moving left", generator=torch.Generator().manual_seed(0), **kw).frames
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
