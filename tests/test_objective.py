"""The diffusion objective: scaling, weighting and loss, the same for images and videos."""

import pytest
import torch
from diffusers import DDPMScheduler

from ls_video.objective import DiffusionObjective, ObjectiveConfig


class VaeConfig:
    scaling_factor = 0.5
    shift_factor = 0.25


def scheduler(prediction_type="epsilon"):
    return DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction_type)


def test_scale_uses_scaling_and_shift_factor():
    obj = DiffusionObjective(scheduler(), vae_config=VaeConfig())
    raw = torch.randn(2, 3, 4, 8, 8)
    torch.testing.assert_close(obj.scale(raw), (raw - 0.25) * 0.5)


def test_weights_match_the_written_formulas():
    t = torch.tensor([1, 100, 500, 999])
    s = scheduler()
    a = s.alphas_cumprod[t]
    snr = a / (1 - a)
    x0 = DiffusionObjective(s, ObjectiveConfig(x0_weight_cap=100)).weights(t)
    torch.testing.assert_close(x0, torch.clamp((1 - a) / a, max=100))
    gamma = DiffusionObjective(s, ObjectiveConfig(snr_gamma=5.0)).weights(t)
    torch.testing.assert_close(gamma, torch.clamp(snr, max=5.0) / snr)
    v = DiffusionObjective(scheduler("v_prediction"), ObjectiveConfig(snr_gamma=5.0)).weights(t)
    torch.testing.assert_close(v, torch.clamp(snr, max=5.0) / (snr + 1))
    assert DiffusionObjective(s).weights(t) is None


def test_loss_is_per_sample_mean_for_images_and_clips():
    """A clip's loss averages over all its frames; an image batch is the same objective with F absent."""
    obj = DiffusionObjective(scheduler(), ObjectiveConfig(x0_weight_cap=10))
    raw = torch.randn(3, 4, 4, 8, 8)
    t = torch.tensor([10, 400, 900])

    def zero(noisy, timesteps):
        return torch.zeros_like(noisy)

    clip = obj.loss(zero, raw, torch.Generator().manual_seed(0), t)
    noise = torch.randn(raw.shape, generator=torch.Generator().manual_seed(0))
    expected = (noise.pow(2).flatten(1).mean(1) * obj.weights(t)).mean()
    torch.testing.assert_close(clip, expected)
    image = obj.loss(zero, raw[:, 0], torch.Generator().manual_seed(0), t)
    assert image.shape == () and torch.isfinite(image)


def test_caption_dropout_and_bad_config():
    obj = DiffusionObjective(scheduler(), ObjectiveConfig(caption_dropout=1.0))
    embeds, empty = torch.randn(4, 3, 2), torch.zeros(1, 3, 2)
    assert torch.equal(obj.drop_captions(embeds, empty), torch.zeros(4, 3, 2))
    never = DiffusionObjective(scheduler(), ObjectiveConfig(caption_dropout=0.0))
    assert torch.equal(never.drop_captions(embeds, lambda: 1 / 0), embeds)  # (the empty prompt is not even made)
    with pytest.raises(ValueError, match="caption_dropout"):
        ObjectiveConfig(caption_dropout=1.5)
    with pytest.raises(ValueError, match="prediction_type"):
        ObjectiveConfig(prediction_type="sample")


def test_image_weight_weights_every_timestep_alike_for_images_only():
    """image_weight: image batches get that constant weight at every timestep (low noise included, where the
    capped x0 weight is nearly 0); video batches keep their weights. Whether a batch is one of images is the
    caller's word (``images``): fails if the objective decides it again from the shape."""
    obj = DiffusionObjective(scheduler(), ObjectiveConfig(x0_weight_cap=100, image_weight=4.0))
    assert 1 < obj.weights(torch.arange(1000)).mean() < 100 and obj.weights(torch.tensor([1]))[0] < 1e-3
    t = torch.tensor([1, 500, 999])

    def zero(noisy, timesteps):
        return torch.zeros_like(noisy)

    raw = torch.randn(3, 4, 4, 8, 8)
    noise = torch.randn(raw.shape, generator=torch.Generator().manual_seed(0)).pow(2).flatten(1).mean(1)
    clip = obj.loss(zero, raw, torch.Generator().manual_seed(0), t)
    torch.testing.assert_close(clip, (noise * obj.weights(t)).mean())
    for image in (raw[:, :1], raw[:, 0]):  # (B, 1, C, h, w) and (B, C, h, w)
        per_image = torch.randn(image.shape, generator=torch.Generator().manual_seed(0)).pow(2).flatten(1).mean(1)
        torch.testing.assert_close(obj.loss(zero, image, torch.Generator().manual_seed(0), t, images=True),
                                   per_image.mean() * 4.0)
        torch.testing.assert_close(obj.loss(zero, image, torch.Generator().manual_seed(0), t),
                                   (per_image * obj.weights(t)).mean())  # not said to be images: a video's weights
    same = DiffusionObjective(scheduler(), ObjectiveConfig(x0_weight_cap=100))
    torch.testing.assert_close(same.loss(zero, raw[:, :1], torch.Generator().manual_seed(0), t, images=True),
                               (per_image * same.weights(t)).mean())  # None: images weighted as videos
    assert DiffusionObjective(scheduler()).weights(t) is None
    with pytest.raises(ValueError, match="image_weight"):
        ObjectiveConfig(image_weight=0.0)


@pytest.mark.parametrize("override", [False, True], ids=["scheduler", "override"])
def test_v_prediction_target_against_a_hand_computed_oracle(override):
    """An oracle that returns the velocity written out by hand, ``v = sqrt(a_t) * noise - sqrt(1 - a_t) * x0``,
    scores a loss of 0 with ``v_prediction`` (from the scheduler or from ``ObjectiveConfig.prediction_type``
    overriding an epsilon scheduler); the epsilon oracle does not. Fails if the target is the noise, if the
    override is ignored, or if the velocity's signs or factors are swapped (the loss of the old test only
    had to go down)."""
    config = ObjectiveConfig(prediction_type="v_prediction") if override else None
    obj = DiffusionObjective(scheduler("epsilon" if override else "v_prediction"), config)
    raw = torch.randn(3, 2, 4, 8, 8)
    t = torch.tensor([5, 500, 990])
    noise = torch.randn(raw.shape, generator=torch.Generator().manual_seed(0))
    a = scheduler().alphas_cumprod[t].view(-1, 1, 1, 1, 1)
    velocity = a.sqrt() * noise - (1 - a).sqrt() * raw

    def oracle(value):
        def denoise(noisy, timesteps):
            torch.testing.assert_close(noisy, a.sqrt() * raw + (1 - a).sqrt() * noise)
            return value
        return denoise

    v_loss = obj.loss(oracle(velocity), raw, torch.Generator().manual_seed(0), t)
    eps_loss = obj.loss(oracle(noise), raw, torch.Generator().manual_seed(0), t)
    assert v_loss < 1e-10 and eps_loss > 0.1
    swapped = (1 - a).sqrt() * noise - a.sqrt() * raw
    assert obj.loss(oracle(swapped), raw, torch.Generator().manual_seed(0), t) > 0.1
