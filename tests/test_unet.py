import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.resnet import ResnetBlock2D

from ls_video.testing.tiny import tiny_unet
from ls_video.unet import (
    TemporalConfig,
    apply_temporal_mixing,
    get_temporal_config,
    num_shift_hooks,
    using_frames,
    video_unet_forward,
)


def inputs(b=2, f=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, f, 4, 8, 8, generator=g), torch.tensor([10, 700][:b]),
            torch.randn(b, 5, 32, generator=g))


def test_no_new_parameters_or_keys():
    plain = tiny_unet()
    shifted = apply_temporal_mixing(tiny_unet(), TemporalConfig("shift"))
    assert list(plain.state_dict()) == list(shifted.state_dict())
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in shifted.parameters())
    n_resnets = sum(isinstance(m, ResnetBlock2D) for m in shifted.modules())
    assert n_resnets > 0 and num_shift_hooks(shifted) == n_resnets


def test_single_frame_equals_plain_unet():
    torch.manual_seed(0)
    unet = tiny_unet().eval()
    x, t, ctx = inputs(f=1)
    with torch.no_grad():
        plain = unet(x[:, 0], t, encoder_hidden_states=ctx).sample
        apply_temporal_mixing(unet, TemporalConfig("shift"))
        shifted = video_unet_forward(unet, x, t, ctx)[:, 0]
    assert torch.equal(plain, shifted)


def test_shift_mixes_frames_and_none_does_not():
    torch.manual_seed(0)
    unet = tiny_unet().eval()
    x, t, ctx = inputs(b=1, f=3)
    x2 = x.clone()
    x2[:, 2] += 1.0  # change only the last frame
    with torch.no_grad():
        apply_temporal_mixing(unet, TemporalConfig("none"))
        a, b = video_unet_forward(unet, x, t, ctx), video_unet_forward(unet, x2, t, ctx)
        assert torch.equal(a[:, 0], b[:, 0])  # frames independent
        apply_temporal_mixing(unet, TemporalConfig("shift"))
        a, b = video_unet_forward(unet, x, t, ctx), video_unet_forward(unet, x2, t, ctx)
        assert not torch.allclose(a[:, 0], b[:, 0])  # frame 0 now sees frame 2 (through frame 1)


def test_clips_do_not_mix_across_the_batch():
    torch.manual_seed(0)
    unet = apply_temporal_mixing(tiny_unet().eval())
    x, t, ctx = inputs(b=2, f=3)
    with torch.no_grad():
        together = video_unet_forward(unet, x, t, ctx)
        alone = torch.cat([video_unet_forward(unet, x[i : i + 1], t[i : i + 1], ctx[i : i + 1])
                           for i in range(2)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_shift_does_not_touch_skip_or_attention():
    torch.manual_seed(0)
    unet = apply_temporal_mixing(tiny_unet().eval())
    seen = []
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Conv2d) and module._forward_pre_hooks:
            seen.append(name)
    assert seen and all(name.endswith("conv1") for name in seen)
    assert not any("attentions" in name or "conv_shortcut" in name for name in seen)


def test_save_and_plain_reload(tmp_path):
    unet = apply_temporal_mixing(tiny_unet(), TemporalConfig("shift", 0.25))
    unet.save_pretrained(tmp_path)
    get_temporal_config(unet).save(tmp_path)
    plain, info = UNet2DConditionModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert TemporalConfig.load(tmp_path) == TemporalConfig("shift", 0.25)
    for a, b in zip(unet.state_dict().values(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_deepcopy_keeps_its_own_frame_state():
    import copy

    unet = apply_temporal_mixing(tiny_unet())
    twin = copy.deepcopy(unet)
    assert twin._latent_shift.state is not unet._latent_shift.state
    hook = next(iter(twin.down_blocks[0].resnets[0].conv1._forward_pre_hooks.values()))
    assert hook.state is twin._latent_shift.state


def test_sd15_sized_unet_gains_no_parameters():
    from ls_video.testing.presets import sd15_unet

    with torch.device("meta"):
        plain, shifted = sd15_unet(), apply_temporal_mixing(sd15_unet())
    count = sum(p.numel() for p in plain.parameters())
    assert count == sum(p.numel() for p in shifted.parameters()) == 859_520_964
    assert list(plain.state_dict()) == list(shifted.state_dict())
    assert num_shift_hooks(shifted) == 22  # every ResnetBlock2D of down, mid and up blocks


def test_inference_in_place_shift_matches_autograd_path():
    torch.manual_seed(0)
    unet = apply_temporal_mixing(tiny_unet().eval())
    x, t, ctx = inputs(b=2, f=4)
    with torch.no_grad():
        fast = video_unet_forward(unet, x, t, ctx)  # in-place shift before each conv1
    slow = video_unet_forward(unet, x.requires_grad_(), t, ctx)  # out-of-place, differentiable
    assert torch.allclose(fast, slow.detach(), atol=1e-6)


@pytest.mark.parametrize("act_fn", ["silu", "relu"])
def test_training_shift_in_place_gives_the_out_of_place_gradients(act_fn):
    """In training the conv1 hooks shift SiLU's output in place; outputs and gradients equal those of the
    out-of-place shift. Fails if the in-place form's backward is wrong, or if it were used after ReLU, whose
    backward reads the output it would overwrite (autograd raises)."""
    import copy

    torch.manual_seed(0)
    fast = apply_temporal_mixing(tiny_unet(act_fn=act_fn).train(), TemporalConfig("shift", 0.25))
    reference = copy.deepcopy(fast)
    hooks = [h for m in reference.modules() for h in m._forward_pre_hooks.values()]
    assert hooks and all(h.in_place_grad == (act_fn == "silu") for h in hooks)
    for hook in hooks:
        hook.in_place_grad = False
    x, t, ctx = inputs(b=2, f=3)
    outs = []
    for unet in (fast, reference):
        out = video_unet_forward(unet, x, t, ctx)
        out.square().mean().backward()
        outs.append(out.detach())
    assert torch.equal(outs[0], outs[1])
    assert_same_grads(fast, reference)


def test_plain_call_after_a_video_call_is_an_image_model():
    """The frame count lives only for one video_unet_forward call: a later ``unet(images)`` never shifts
    channels between unrelated images (or fails on a batch that F does not divide)."""
    torch.manual_seed(0)
    unet = apply_temporal_mixing(tiny_unet().eval())
    x, t, ctx = inputs(b=2, f=3)
    images = torch.randn(5, 4, 8, 8)
    with torch.no_grad():
        before = unet(images, 10, encoder_hidden_states=ctx[:1].expand(5, -1, -1)).sample
        video_unet_forward(unet, x, t, ctx)
        after = unet(images, 10, encoder_hidden_states=ctx[:1].expand(5, -1, -1)).sample
    assert torch.equal(before, after)


def two_clip_lengths_loss(unet):
    """One backward over two video calls of different frame counts (F = 3, then F = 2)."""
    x, t, ctx = inputs(b=2, f=3)
    y, s, cty = inputs(b=1, f=2, seed=1)
    return video_unet_forward(unet, x, t, ctx).square().mean() + video_unet_forward(unet, y, s, cty).abs().mean()


def assert_same_grads(unet, reference):
    for p, q in zip(unet.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mixing", ["shift", "temporal_conv"])
def test_gradient_checkpointing_keeps_the_shift_in_the_recomputation(mixing):
    """Checkpointed blocks re-run during backward, after video_unet_forward returned: same gradients as
    without checkpointing. Fails if the recompute uses a wrong frame count: F = 1 (the state after the
    call; diffusers' own checkpointing function) or the F of the last call (a state read at backward time,
    not the forward's: the F = 3 clip recomputed with F = 2 shifts other channels)."""
    import copy

    torch.manual_seed(0)
    plain = apply_temporal_mixing(tiny_unet().train(), TemporalConfig(mixing, 0.25))
    if mixing == "temporal_conv":  # give the zero-initialised added layers weights, as training would
        with torch.no_grad():
            for name, p in plain.named_parameters():
                if ".temporal_conv." in name:
                    p.normal_(0, 0.05)
    checkpointed = copy.deepcopy(plain)
    checkpointed.enable_gradient_checkpointing()  # diffusers' method, as a user would call it
    assert checkpointed.is_gradient_checkpointing
    for unet in (plain, checkpointed):
        two_clip_lengths_loss(unet).backward()
    assert_same_grads(checkpointed, plain)


def test_checkpointing_enabled_before_the_mixing_is_installed_is_frame_aware():
    """Install order does not matter: checkpointing switched on for the plain image U-Net (as
    ``PerformanceConfig`` may be applied first) is made frame-aware when the shift is installed. Fails
    if only a later ``enable_gradient_checkpointing`` call were wrapped (diffusers' function recomputes
    with F = 1)."""
    torch.manual_seed(0)
    plain = tiny_unet().train()
    checkpointed = tiny_unet().train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.enable_gradient_checkpointing()
    for unet in (plain, checkpointed):
        apply_temporal_mixing(unet, TemporalConfig("shift", 0.25))
        two_clip_lengths_loss(unet).backward()
    assert_same_grads(checkpointed, plain)


def test_video_forward_walks_no_modules(monkeypatch):
    """Checkpointing is made frame-aware at install, so a training call does not search the U-Net's
    modules (fails on a per-call check such as ``unet.is_gradient_checkpointing``)."""
    unet = apply_temporal_mixing(tiny_unet().train())
    unet.enable_gradient_checkpointing()
    walks = []
    for name in ("modules", "named_modules", "children", "named_children"):
        method = getattr(unet, name)
        monkeypatch.setattr(unet, name, lambda *a, _m=method, _n=name, **k: walks.append(_n) or _m(*a, **k))
    x, t, ctx = inputs(b=1, f=2)
    video_unet_forward(unet, x, t, ctx).mean().backward()
    assert walks == []


def test_frames_is_reset_even_when_the_call_fails():
    unet = apply_temporal_mixing(tiny_unet().eval())
    with pytest.raises(RuntimeError), using_frames(unet, 3):
        assert unet._latent_shift.state.num_frames == 3
        raise RuntimeError("boom")
    assert unet._latent_shift.state.num_frames == 1


def test_frame_aware_checkpointing_survives_a_deepcopy():
    """The copy's checkpointed blocks read the copy's frame count (gradients as without checkpointing)."""
    import copy

    torch.manual_seed(0)
    plain = apply_temporal_mixing(tiny_unet().train(), TemporalConfig("shift", 0.25))
    original = copy.deepcopy(plain)
    original.enable_gradient_checkpointing()
    checkpointed = copy.deepcopy(original)
    func = checkpointed.down_blocks[0]._gradient_checkpointing_func
    assert func.state is checkpointed._latent_shift.state is not original._latent_shift.state
    with using_frames(original, 5):  # the original's frame count must not leak into the copy's recompute
        for unet in (plain, checkpointed):
            two_clip_lengths_loss(unet).backward()
    assert_same_grads(checkpointed, plain)
