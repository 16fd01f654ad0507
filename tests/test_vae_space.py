"""The conversions between pixels, the VAE and the diffusion model (ls_video/vae_space.py), and the recipe stages."""

import subprocess
import sys

import pytest
import torch

from ls_video.commands.stage import Stages
from ls_video.vae_space import LatentScale, pixels_to_vae


def test_pixels_to_vae_maps_the_range_and_moves_channels_first():
    """Fails if channels stay last, or the range is [0, 2] / [0, 1] instead of [-1, 1]."""
    frames = torch.zeros(2, 4, 5, 3, dtype=torch.uint8)
    frames[..., 0] = 255
    frames[0, 1, 2, 1] = 51
    x = pixels_to_vae(frames)
    assert x.shape == (2, 3, 4, 5) and x.dtype == torch.float32
    assert torch.all(x[:, 0] == 1) and x[0, 1, 1, 2] == pytest.approx(51 / 127.5 - 1) and x[1, 2].eq(-1).all()
    assert pixels_to_vae(frames, torch.float16).dtype == torch.float16


def test_latent_scale_shifts_before_scaling_and_inverts():
    """Fails if the shift is applied after the scaling (``raw * s - shift``) or ``to_vae`` is not the inverse."""
    config = type("Config", (), {"scaling_factor": 0.5, "shift_factor": 0.25})()
    scale = LatentScale.of(config)
    raw = torch.tensor([1.25, -0.75])
    torch.testing.assert_close(scale.to_model(raw), torch.tensor([0.5, -0.5]))
    torch.testing.assert_close(scale.to_vae(scale.to_model(raw)), raw)
    none = type("Config", (), {"scaling_factor": 0.18215, "shift_factor": None})()
    assert LatentScale.of(none) == LatentScale(0.18215, 0.0) and LatentScale.of(None) == LatentScale()


def test_stages_record_seconds_by_name_and_raise_on_failure():
    """Fails if a failing stage passes silently or a named stage's seconds or command line are not kept."""
    stages = Stages()
    stages.run("json.tool", "--help", name="help")
    assert set(stages.seconds) == {"help"} and stages.seconds["help"] > 0
    assert stages.log == [f"{sys.executable} -m json.tool --help"]
    with pytest.raises(subprocess.CalledProcessError):
        stages.run("json.tool", "/no/such/file")
    assert len(stages.log) == 2 and set(stages.seconds) == {"help"}
