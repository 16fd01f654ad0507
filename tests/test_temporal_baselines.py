"""The ablation's baselines behind ``temporal_mixing`` and the shift placement switch."""

import pytest
import torch
from diffusers.models.resnet import ResnetBlock2D

from ls_video.components import build_pipeline
from ls_video.pipeline import LatentShiftPipeline
from ls_video.temporal_layers import added_parameters
from ls_video.testing.tiny import tiny_components, tiny_unet
from ls_video.unet import (
    TemporalConfig,
    apply_temporal_mixing,
    get_temporal_config,
    video_unet_forward,
)

BASELINES = ["temporal_conv", "temporal_attention"]


def inputs(b=1, f=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, f, 4, 8, 8, generator=g), torch.tensor([500] * b), torch.randn(b, 5, 32, generator=g))


def randomize_added(unet):
    """Give the zero-initialised output layers weights, as training would."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if ".temporal_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("mixing", BASELINES)
def test_baseline_starts_as_the_image_unet_and_keeps_base_keys(mixing):
    torch.manual_seed(0)
    plain = tiny_unet().eval()
    video = tiny_unet().eval()
    video.load_state_dict(plain.state_dict())
    apply_temporal_mixing(video, TemporalConfig(mixing))
    assert set(plain.state_dict()) < set(video.state_dict())  # base keys all there, plus the added ones
    added = added_parameters(video)
    assert added == sum(p.numel() for p in video.parameters()) - sum(p.numel() for p in plain.parameters()) > 0
    x, t, ctx = inputs()
    with torch.no_grad():
        apply_temporal_mixing(plain, TemporalConfig("none"))
        assert torch.allclose(video_unet_forward(video, x, t, ctx), video_unet_forward(plain, x, t, ctx), atol=1e-6)


@pytest.mark.parametrize("mixing", BASELINES + ["shift"])
def test_mixing_carries_information_between_frames(mixing):
    torch.manual_seed(0)
    unet = apply_temporal_mixing(tiny_unet().eval(), TemporalConfig(mixing))
    randomize_added(unet)
    x, t, ctx = inputs()
    x2 = x.clone()
    x2[:, 3] += 1.0  # change only the last frame
    with torch.no_grad():
        a, b = video_unet_forward(unet, x, t, ctx), video_unet_forward(unet, x2, t, ctx)
    assert not torch.allclose(a[:, 0], b[:, 0])


def test_switching_back_removes_added_layers():
    unet = tiny_unet()
    n = len(unet.state_dict())
    apply_temporal_mixing(unet, TemporalConfig("temporal_attention"))
    apply_temporal_mixing(unet, TemporalConfig("shift"))
    assert len(unet.state_dict()) == n and added_parameters(unet) == 0


def test_input_placement_shifts_the_block_input():
    torch.manual_seed(0)
    unet = tiny_unet().eval()
    x, t, ctx = inputs()
    with torch.no_grad():
        apply_temporal_mixing(unet, TemporalConfig("shift", shift_placement="residual"))
        residual = video_unet_forward(unet, x, t, ctx)
        apply_temporal_mixing(unet, TemporalConfig("shift", shift_placement="input"))
        hooks = unet._latent_shift.handles
        assert len(hooks) == sum(isinstance(m, ResnetBlock2D) for m in unet.modules())
        inplace = video_unet_forward(unet, x, t, ctx)
        apply_temporal_mixing(unet, TemporalConfig("none"))
        single = video_unet_forward(unet, x[:, :1], t, ctx)
        apply_temporal_mixing(unet, TemporalConfig("shift", shift_placement="input"))
        assert torch.equal(video_unet_forward(unet, x[:, :1], t, ctx), single)  # identity for one frame
    assert not torch.allclose(residual, inplace)
    with pytest.raises(ValueError, match="shift_placement"):
        TemporalConfig("shift", shift_placement="middle")


@pytest.mark.parametrize("mixing", BASELINES)
def test_trained_baseline_saves_and_loads_as_a_pipeline(tmp_path, mixing):
    parts = tiny_components(seed=0)
    apply_temporal_mixing(parts["unet"], TemporalConfig(mixing))
    randomize_added(parts["unet"])
    pipe = build_pipeline(parts)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path / "model")
    again = LatentShiftPipeline.from_pretrained(tmp_path / "model")
    again.set_progress_bar_config(disable=True)
    assert get_temporal_config(again.unet).temporal_mixing == mixing
    kw = dict(num_frames=3, height=16, width=16, num_inference_steps=2, output_type="pt")
    a = pipe(["a red square"], generator=torch.Generator().manual_seed(0), **kw).frames
    b = again(["a red square"], generator=torch.Generator().manual_seed(0), **kw).frames
    assert torch.allclose(a, b, atol=1e-5)


def test_unknown_mixing_is_a_clear_error():
    with pytest.raises(ValueError, match="temporal_mixing must be one of"):
        TemporalConfig("temporal_lstm")


@pytest.mark.parametrize("mixing", BASELINES)
def test_module_trains_the_added_layers(mixing):
    from ls_video.module import LatentShiftModule

    parts = tiny_components(seed=0)
    m = LatentShiftModule(components=parts, temporal=TemporalConfig(temporal_mixing=mixing))
    batch = {"latents": torch.randn(2, 3, 4, 8, 8), "captions": ["a red square", "a blue circle"]}
    m.training_step(batch, 0).backward()
    grads = [p.grad for n, p in m.unet.named_parameters() if ".temporal_" in n]
    assert grads and all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    opt = m.configure_optimizers()["optimizer"]
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(p.numel() for p in m.unet.parameters())
