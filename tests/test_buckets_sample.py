"""Sampling at the shapes buckets train (issue #27): any multiple of the VAE x U-Net stride, one line otherwise."""

import json
import subprocess
import sys

from ls_video.video_io import read_video

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def sample(*args):
    return subprocess.run([sys.executable, "sample.py", *args], capture_output=True, text=True, cwd=ROOT)


def test_portrait_and_landscape_shapes_sample(tiny_base, tmp_path):
    for height, width, frames in ((32, 16, 3), (16, 40, 2)):  # tiny base: VAE x2, U-Net x2 -> multiples of 4
        out = tmp_path / f"{height}x{width}"
        r = sample("--model", tiny_base, "--prompt", "a red square", "--num-frames", str(frames), "--height",
                   str(height), "--width", str(width), "--num-inference-steps", "1", "--out", str(out))
        assert r.returncode == 0, r.stderr[-2000:]
        [s] = json.loads((out / "manifest.json").read_text())["samples"]
        assert read_video(out / s["file"])[0].shape == (frames, height, width, 3)


def test_a_shape_the_unet_cannot_take_is_one_line(tiny_base, tmp_path):
    """18 is a multiple of the VAE's x2 (the old check let it through) but not of the VAE x U-Net stride 4."""
    r = sample("--model", tiny_base, "--prompt", "x", "--height", "18", "--width", "16", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if "divisible" in line]
    assert len(lines) == 1 and "divisible by 4" in lines[0] and "18x16" in lines[0], r.stderr[-2000:]
