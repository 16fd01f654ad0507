"""``ls-video app``: a real Gradio server on 127.0.0.1 with the shipped toy base, driven by ``gradio_client``
and by a headless Chromium (Debian's ``chromium``; skipped with the reason when it is absent)."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

gradio = pytest.importorskip("gradio", reason="the app extra is not installed: pip install -e '.[app]'")
gradio_client = pytest.importorskip("gradio_client")

ROOT = Path(__file__).resolve().parents[1]
MODEL = "assets/toy-base"  # 32x32 pixels; sizes must be multiples of 8
MAX_FRAMES = 8


def request(client, prompt: str = "a red square", frames: int = 3, height: int = 32, width: int = 32, steps: int = 2,
            guidance: float = 1.0, seed: int = 1, random_seed: bool = False):
    return client.predict(prompt=prompt, negative_prompt="", num_frames=frames, height=height, width=width,
                          steps=steps, guidance_scale=guidance, seed=seed, random_seed=random_seed,
                          scheduler="ddim", fps=8, mode="text", api_name="/generate")


def frames_of(path: str) -> np.ndarray:
    from ls_video.video_io import read_video

    return read_video(path)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``ls-video app`` in a subprocess (this checkout's code: cwd is the repo root); yields its URL."""
    port, out = free_port(), tmp_path_factory.mktemp("app_out")
    log = open(out / "server.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "ls_video.cli", "app", "--model", MODEL, "--port", str(port), "--concurrency", "2",
         "--max-frames", str(MAX_FRAMES), "--max-steps", "4", "--out", str(out)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError("the app did not start:\n" + (out / "server.log").read_text()[-3000:]) from None
            time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def client(server):
    return gradio_client.Client(server, verbose=False)


def test_valid_bad_then_valid_again(client, tmp_path):
    """Guards: a request returns an mp4 and a gif of the asked frame count with its remake command; a bad request
    (empty prompt, a size the VAE cannot take, more frames than the server allows) is a one-line message, not a
    dead server; the next valid request still works."""
    mp4, files, command, settings = request(client, frames=5, seed=7)
    assert frames_of(mp4).shape[:3] == (5, 32, 32)
    assert sorted(Path(f).suffix for f in files) == [".gif", ".mp4"]
    assert frames_of(next(f for f in files if f.endswith(".gif"))).shape[0] == 5
    assert "--num-frames 5" in command and "--seed 7" in command and settings["seed"] == 7
    for kwargs, message in [(dict(prompt="  "), "prompt is empty"), (dict(height=36), "multiple of 8"),
                            (dict(frames=MAX_FRAMES + 1), f"greater than maximum value {MAX_FRAMES}")]:
        with pytest.raises(gradio_client.exceptions.AppError) as err:
            request(client, **kwargs)
        assert message in str(err.value) and "\n" not in str(err.value)
    mp4, _, _, _ = request(client, frames=2, seed=8)
    assert frames_of(mp4).shape[0] == 2


def test_two_requests_at_once(client):
    """Guards: two requests running together on the one loaded model (``--concurrency 2``) both finish, each with
    its own frame count (a shared scheduler or frame count between requests would break one of them)."""
    with ThreadPoolExecutor(2) as pool:
        jobs = [pool.submit(request, client, frames=n, seed=n) for n in (3, 6)]
        results = [j.result(timeout=300) for j in jobs]
    assert [frames_of(r[0]).shape[0] for r in results] == [3, 6]


def test_random_seed_and_the_command_remakes_the_video(client, tmp_path):
    """Guards: with "random seed" the result names the seed drawn, and the ``ls-video sample`` command shown
    beside it makes the same video (same noise, scheduler, size, guidance)."""
    mp4, _, command, settings = request(client, prompt="a blue circle", frames=3, guidance=3.0, random_seed=True)
    assert f"--seed {settings['seed']}" in command
    from ls_video.commands import sample

    args = shlex.split(command)
    assert args[:2] == ["ls-video", "sample"]
    args[args.index("--out") + 1] = str(tmp_path)
    sample.main(args[2:] + ["--device", "cpu"])
    (remade,) = [p for p in tmp_path.iterdir() if p.suffix == ".mp4"]
    a, b = frames_of(mp4).astype(int), frames_of(str(remade)).astype(int)
    assert a.shape == b.shape and np.abs(a - b).mean() < 2.0


def test_denoising_steps_report_progress_and_oom_is_one_line(monkeypatch):
    """Guards: every denoising step reaches the progress hook (the page's progress bar), too many frames and running
    out of memory are one-line request errors (``UsageError`` -> ``gr.Error``), not a crashed worker."""
    import torch

    from ls_video.app.engine import Engine, Limits, Settings
    from ls_video.app.ui import run_request
    from ls_video.errors import UsageError
    from ls_video.shipped import shipped_path

    engine = Engine(shipped_path(MODEL), device="cpu", limits=Limits(max_frames=4))
    steps: list[tuple[int, int]] = []
    result = engine.generate(Settings("a red square", num_frames=2, num_inference_steps=3, guidance_scale=1.0),
                             on_step=lambda done, total: steps.append((done, total)))
    assert steps == [(1, 3), (2, 3), (3, 3)] and os.path.isfile(result.gif)
    with pytest.raises(UsageError, match="frames must be 1..4 on this server"):  # an API call past the slider
        engine.generate(Settings("a red square", num_frames=5))

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(engine, "pipeline", lambda *a, **k: no_memory)
    values = ["a red square", "", 4, 32, 32, 2, 1.0, 0, False, "ddim", 8, "text"]
    with pytest.raises(gradio.Error) as err:
        run_request(engine, values)
    assert "out of memory for 4 frames at 32x32" in str(err.value.message) and "\n" not in err.value.message


def test_help_and_write_space(tmp_path, capsys):
    """Guards: ``ls-video app --help`` documents every option and ``--write-space`` writes the files a Gradio
    Space runs (app.py that starts this app on the model, requirements.txt, README front matter)."""
    from ls_video.cli import main

    with pytest.raises(SystemExit) as done:
        main(["app", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    parser_options = ["--model", "--host", "--port", "--share", "--concurrency", "--max-queue", "--max-frames",
                      "--max-size", "--max-steps", "--out", "--device", "--dtype", "--raw", "--ema", "--write-space",
                      "--space-requirement"]
    for option in parser_options:
        assert option in text
    from ls_video.commands.app import parse_args

    assert parse_args(["--model", "m"]).port == 7860
    assert main(["app", "--model", "ORG/toy", "--write-space", str(tmp_path), "--max-frames", "12"]) == 0
    app_py = (tmp_path / "app.py").read_text()
    compile(app_py, "app.py", "exec")
    assert "'ORG/toy'" in app_py and '"12"' in app_py and "ls_video.commands.app" in app_py
    assert "ls-video[app]" in (tmp_path / "requirements.txt").read_text()
    assert "sdk: gradio" in (tmp_path / "README.md").read_text()


PAGE_SCRIPT = """(async () => {
  const wait = async (f, what, ms = 240000) => { const t0 = Date.now();
    while (!f()) { if (Date.now() - t0 > ms) throw new Error('timed out waiting for ' + what);
                   await new Promise(r => setTimeout(r, 200)); } return f(); };
  const box = await wait(() => document.querySelector('#prompt textarea'), 'the prompt box');
  box.value = 'a green triangle'; box.dispatchEvent(new Event('input', {bubbles: true}));
  await new Promise(r => setTimeout(r, 300));
  (await wait(() => document.querySelector('#generate'), 'the button')).click();
  const video = await wait(() => { const v = document.querySelector('#video video');
                                   return v && v.readyState >= 2 && v; }, 'the generated video');
  const command = document.querySelector('#command').innerText;
  return {w: video.videoWidth, h: video.videoHeight, frames: video.duration, command};
})()"""


def test_browser_generates_and_shows_the_video(server, tmp_path):
    """Guards: the page itself works in a real browser: type a prompt, press Generate, the video plays in the
    page with its command beside it (screenshot: LS_VIDEO_APP_SCREENSHOT=docs/app_screenshot.png)."""
    from cdp import Chromium, find_chromium

    binary = find_chromium()
    if binary is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install -y chromium)")
    browser = Chromium(binary)
    try:
        browser.open(server)
        seen = browser.evaluate(PAGE_SCRIPT, timeout_s=300)
        time.sleep(1.0)  # let the first frame paint
        shot = Path(os.environ.get("LS_VIDEO_APP_SCREENSHOT", tmp_path / "app.png"))
        browser.screenshot(shot)
    finally:
        browser.close()
    assert (seen["w"], seen["h"]) == (32, 32), seen
    assert f"--num-frames {MAX_FRAMES}" in seen["command"] and "a green triangle" in seen["command"]
    from PIL import Image

    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[:2] == (1250, 1280) and image.std() > 5


def test_loop_mode_and_prompt_travel_reach_the_pipeline():
    """The generation modes of issue #36 the app offers: ``mode="loop"`` samples with the circular shift and its
    command says ``--loop``; a key-frame prompt (``0:...|2:...``) travels, as in ``ls-video sample``. Fails if
    the mode is only a label (the loop video equals the plain one) or the prompt reaches the pipeline as text."""
    import torch

    from ls_video.app.engine import Engine, Settings
    from ls_video.pipeline import LatentShiftPipeline
    from ls_video.schedulers import make_scheduler
    from ls_video.shipped import shipped_path
    from ls_video.video_io import read_video

    engine = Engine(shipped_path(MODEL), device="cpu")
    plain = engine.generate(Settings("a red square moving left", num_frames=4, num_inference_steps=2))
    loop = engine.generate(Settings("a red square moving left", num_frames=4, num_inference_steps=2, mode="loop"))
    assert "--loop" in loop.command and "--loop" not in plain.command
    assert not np.array_equal(read_video(plain.mp4)[0], read_video(loop.mp4)[0])
    travel = "0:a red square moving left|2:a blue circle moving up"
    got = engine.generate(Settings(travel, num_frames=4, num_inference_steps=2, guidance_scale=1.0))
    pipe = LatentShiftPipeline.from_pretrained(shipped_path(MODEL))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler("ddim", pipe.scheduler.config)  # the app's default sampler
    def gap(prompt) -> float:  # mean pixel difference from the app's mp4 (lossy: yuv420p at 32x32)
        want = pipe(prompt, num_frames=4, num_inference_steps=2, guidance_scale=1.0,
                    generator=[torch.Generator().manual_seed(got.seed)]).frames[0]
        return float(np.abs(read_video(got.mp4)[0].astype(int) - (want * 255).round().astype(int)).mean())

    travelled, as_text = gap({0: "a red square moving left", 2: "a blue circle moving up"}), gap(travel)
    assert travelled < 4.0 and travelled < as_text / 2, (travelled, as_text)
    assert "--prompt '0:a red square moving left|2:a blue circle moving up'" in got.command
