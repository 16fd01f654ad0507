"""The README's runnable blocks run as written (budgets aside) from an empty folder, in their order."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ls_video.video_io import read_video

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- runnable"
# Training and sampling budgets: the README shows a real run's, the test runs the same commands briefly.
BUDGETS = {r"--trainer\.max_steps \d+": "--trainer.max_steps 4",
           r"--num-inference-steps \d+": "--num-inference-steps 2", r"num_inference_steps=\d+": "num_inference_steps=2"}


def runnable_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block right after a ``<!-- runnable ... -->`` line."""
    return re.findall(r"^<!-- runnable[^\n]*-->\n```(\w+)\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def with_budgets(code: str) -> str:
    for pattern, small in BUDGETS.items():
        code = re.sub(pattern, small, code)
    return code


def test_marked_blocks_are_found():
    """Fails if the README loses its runnable walk-through or a marker stops matching its block."""
    text = (ROOT / "README.md").read_text()
    blocks = runnable_blocks(text)
    assert text.count(MARK) == len(blocks) >= 3
    assert {lang for lang, _ in blocks} == {"bash", "python"}
    assert len(text.splitlines()) <= 150


@pytest.mark.slow
def test_readme_walkthrough_runs_from_an_empty_folder(tmp_path):
    """Videos -> shards -> fit -> sample -> export -> the Python snippet, with the ``ls-video`` the project
    installs, from a folder outside the checkout: fails on any command, option or path the README names that
    does not exist (a renamed flag, a script run by a checkout path, a shipped file looked up from the cwd)."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    for lang, code in runnable_blocks((ROOT / "README.md").read_text()):
        code = with_budgets(code)
        cmd = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
        r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{lang} block failed:\n{code}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    assert len(list((tmp_path / "my_videos").glob("*.mp4"))) == 64
    assert len(list((tmp_path / "my_shards").glob("shard-*.tar"))) == 8
    assert (tmp_path / "my_model" / "unet" / "latent_shift.json").is_file()
    assert len(list((tmp_path / "my_samples").glob("*.mp4"))) == 1 and (tmp_path / "left.mp4").is_file()
    for out, frames in (("long_loop", 48), ("travel", 16), ("v2v", 6), ("i2v", 6)):  # the generation modes
        (video,) = (tmp_path / out).glob("*.mp4")
        assert read_video(str(video))[0].shape[0] == frames, out
