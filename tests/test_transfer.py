"""Motion transfer: extract a video U-Net's delta from its base, apply it to another fine-tune."""

import subprocess
import sys

import pytest
import torch

from ls_video.commands.transfer import extract, main
from ls_video.components import load_unet, save_sd_folder
from ls_video.pipeline import LatentShiftPipeline
from ls_video.testing.tiny import tiny_components
from ls_video.unet import TemporalConfig, get_temporal_config


def fine_tune(base: str, out, seed: int, scale: float = 0.05, config: TemporalConfig | None = None) -> str:
    """``base`` with every U-Net weight moved by a seeded random low-rank-ish change, saved as a folder."""
    pipe = LatentShiftPipeline.from_pretrained(base)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pipe.unet.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g) * p.abs().mean())
    if config is not None:
        from ls_video.unet import apply_temporal_mixing

        apply_temporal_mixing(pipe.unet, config)
    pipe.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_base):
    root = tmp_path_factory.mktemp("transfer")
    video = fine_tune(tiny_base, root / "video", seed=1, config=TemporalConfig("shift", 0.25))
    other = fine_tune(tiny_base, root / "personal", seed=2)
    return tiny_base, video, other, root


def state(path: str) -> dict:
    return load_unet(path).state_dict()


def test_full_delta_on_its_own_base_gives_the_video_unet(models, tmp_path):
    base, video, _, _ = models
    report = extract(video, base, str(tmp_path / "m.safetensors"))
    assert 0.9 * report["unet_parameters"] < report["stored_parameters"] <= report["unet_parameters"]
    assert main(["apply", "--motion", str(tmp_path / "m.safetensors"), "--target", base, "--out",
                 str(tmp_path / "out")]) == 0
    got, want = state(str(tmp_path / "out")), state(video)
    for name, value in want.items():  # float32 deltas: equal up to the rounding of one subtraction
        torch.testing.assert_close(got[name], value, rtol=0, atol=1e-6 * value.abs().max().item() + 1e-12)
    pipe = LatentShiftPipeline.from_pretrained(str(tmp_path / "out"))
    assert get_temporal_config(pipe.unet) == TemporalConfig("shift", 0.25)  # the shift settings travel


def test_low_rank_error_shrinks_with_rank(models, tmp_path):
    base, video, _, _ = models
    want = state(video)
    errors, sizes = [], []
    for rank in (1, 4, 16):
        path = tmp_path / f"r{rank}.safetensors"
        sizes.append(extract(video, base, str(path), rank=rank)["stored_parameters"])
        main(["apply", "--motion", str(path), "--target", base, "--out", str(tmp_path / f"o{rank}")])
        got = state(str(tmp_path / f"o{rank}"))
        errors.append(sum(float((got[k] - v).norm() ** 2) for k, v in want.items()) ** 0.5)
    assert errors[0] > errors[1] > errors[2] and sizes[0] < sizes[1] < sizes[2]


def test_apply_to_another_fine_tune_adds_the_delta(models, tmp_path):
    base, video, other, _ = models
    extract(video, base, str(tmp_path / "m.safetensors"))
    main(["apply", "--motion", str(tmp_path / "m.safetensors"), "--target", other, "--out", str(tmp_path / "o"),
          "--scale", "0.5"])
    got, b, v, o = state(str(tmp_path / "o")), state(base), state(video), state(other)
    name = "down_blocks.0.resnets.0.conv1.weight"
    torch.testing.assert_close(got[name], o[name] + 0.5 * (v[name] - b[name]), rtol=1e-5, atol=1e-6)


def test_architecture_mismatch_is_one_line(models, tmp_path):
    base, video, _, _ = models
    extract(video, base, str(tmp_path / "m.safetensors"))
    other = tiny_components(seed=3)
    other["unet"] = type(other["unet"])(**{**other["unet"].config, "block_out_channels": (16, 32),
                                           "norm_num_groups": 8, "attention_head_dim": 8})
    save_sd_folder(tmp_path / "wide", other)
    command = [sys.executable, "-m", "ls_video.commands.transfer", "apply", "--motion", str(tmp_path / "m.safetensors"),
               "--target", str(tmp_path / "wide"), "--out", str(tmp_path / "x")]
    r = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in r.stderr.splitlines() if "error" in line]
    assert r.returncode == 2 and len(lines) == 1 and "another U-Net architecture" in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_apply_include_moves_only_matching_layers(models, tmp_path):
    base, video, other, _ = models
    extract(video, base, str(tmp_path / "m.safetensors"))
    assert main(["apply", "--motion", str(tmp_path / "m.safetensors"), "--target", other, "--out",
                 str(tmp_path / "o"), "--include", r"\.attn\d\."]) == 0
    got, b, v, o = state(str(tmp_path / "o")), state(base), state(video), state(other)
    attn, conv = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight", "conv_in.weight"
    torch.testing.assert_close(got[attn], o[attn] + v[attn] - b[attn], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[conv], o[conv], rtol=0, atol=0)
