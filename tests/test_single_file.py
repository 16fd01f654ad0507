"""The U-Net as one original-layout safetensors file: diffusers' own single-file loader reads it back exactly."""

import json

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors import safe_open

from ls_video.single_file import save_unet_single_file
from ls_video.testing.presets import sd15_unet
from ls_video.testing.tiny import tiny_unet


@pytest.mark.parametrize("make", [tiny_unet, pytest.param(sd15_unet, marks=pytest.mark.slow)], ids=["tiny", "sd15"])
def test_from_single_file_gives_back_every_weight(make, tmp_path):
    """Every tensor round-trips through ``UNet2DConditionModel.from_single_file`` (fails on a missing or wrong
    LDM name: diffusers' loader would leave that weight at its random initialisation)."""
    torch.manual_seed(0)
    unet = make()
    unet.save_pretrained(tmp_path / "model" / "unet")
    path = str(tmp_path / "unet.safetensors")
    assert save_unet_single_file(unet, path, {"latent_shift": {"shift_fraction": 0.125}}) == len(unet.state_dict())
    with safe_open(path, "pt") as f:
        assert all(k.startswith("model.diffusion_model.") for k in f.keys())
        assert json.loads(f.metadata()["latent_shift"]) == {"shift_fraction": 0.125}
    back = UNet2DConditionModel.from_single_file(path, config=str(tmp_path / "model"), subfolder="unet").state_dict()
    for key, value in unet.state_dict().items():
        assert torch.equal(back[key], value), key
