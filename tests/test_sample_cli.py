import json
import subprocess
import sys

import pytest

from ls_video.video_io import read_video

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def sample(*args):
    return subprocess.run([sys.executable, "sample.py", *args], capture_output=True, text=True, cwd=ROOT)


def test_samples_plain_sd_folder(tiny_base, tmp_path):
    out = tmp_path / "out"
    r = sample("--model", tiny_base, "--prompt", "a red square moving left", "--prompt", "a blue circle",
               "--num-frames", "5", "--height", "24", "--width", "32", "--num-inference-steps", "2",
               "--num-videos-per-prompt", "2", "--scheduler", "euler", "--out", str(out))
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())["samples"]
    assert len(manifest) == 4 and {s["seed"] for s in manifest} == {0, 1}
    for s in manifest:
        frames, fps = read_video(out / s["file"])
        assert frames.shape == (5, 24, 32, 3) and fps == 8
    assert (out / "contact_sheet.png").exists()


def test_gif_and_prompts_file(tiny_base, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a green circle moving up\n\n")
    r = sample("--model", tiny_base, "--prompts-file", str(prompts), "--num-frames", "2", "--num-inference-steps", "1",
               "--format", "gif", "--out", str(tmp_path / "g"))
    assert r.returncode == 0, r.stderr
    assert list((tmp_path / "g").glob("*.gif"))


def test_out_is_required(tiny_base):
    r = sample("--model", tiny_base, "--prompt", "x")
    assert r.returncode == 2 and "required: --out" in r.stderr


@pytest.mark.parametrize("args,msg", [
    (["--model", "/no/such/model"], "not found"),
    (["--model", "missing.ckpt"], "not found"),
    (["--num-frames", "0"], "must be >= 1"),
    (["--scheduler", "plms"], "invalid choice"),
    (["--height", "15"], "divisible"),
])
def test_bad_input_is_one_line(tiny_base, tmp_path, args, msg):
    base = ["--model", tiny_base, "--prompt", "x", "--out", str(tmp_path / "o")]
    r = sample(*(base + args))
    assert r.returncode != 0
    assert msg in r.stderr and "Traceback" not in r.stderr
