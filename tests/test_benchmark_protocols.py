"""The published extractors and zero-shot protocols (issue 39), with TorchScript stand-ins (no download).

The stand-ins (``ls_video.testing.standins``) have the real networks' call signatures and report in their
first outputs what they were fed, so these tests check the preprocessing each real network needs.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os

import numpy as np
import pytest

from ls_video.testing.standins import PROBE, save_standins
from ls_video.toy.world import ToyWorld
from ls_video.video_io import write_video

TOY_BASE = os.path.join(os.path.dirname(__file__), "..", "assets", "toy-base")
HAS_CLEANFID = importlib.util.find_spec("cleanfid") is not None  # pip install 'ls-video[fid]'


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> dict[str, str]:
    return save_standins(tmp_path_factory.mktemp("nets"))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    from ls_video.testing.tiny import save_tiny_clip

    words = ["a", "red", "green", "blue", "yellow", "square", "circle", "triangle", "moving", "left", "right", "up",
             "down"]
    return save_tiny_clip(tmp_path_factory.mktemp("clip"), words)


def solid(rgb, frames=4, size=16) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (frames, size, size, 3)).copy()


def probe(row: np.ndarray) -> dict:
    return dict(zip(PROBE, row[:len(PROBE)].tolist(), strict=True))


# --- preprocessing ------------------------------------------------------------------------------------------


def test_i3d_is_called_as_stylegan_v_calls_it(nets):
    """Guards the I3D call: uint8 RGB (B, 3, T, H, W) with rescale/resize/return_features, so the network
    itself sees [-1, 1] at 224 x 224 and returns pre-softmax features (float input, channels last, BGR or the
    softmax output would each change these numbers)."""
    from ls_video.metrics.i3d import I3D

    net = I3D(nets["i3d"])
    out = net([solid((255, 0, 51), frames=5), solid((0, 255, 0), frames=5)])
    assert out.shape == (2, 400) and out.dtype == np.float32
    p = probe(out[0])
    assert (p["frames"], p["height"], p["width"]) == (5, 224, 224)
    assert [p["mean_r"], p["mean_g"], p["mean_b"]] == pytest.approx([1.0, -1.0, 51 * 2 / 255 - 1], abs=1e-6)
    assert p["min"] == pytest.approx(-1.0) and p["max"] == pytest.approx(1.0)
    assert abs(out[0].sum() - 1) > 0.1  # features before the softmax, not probabilities
    assert net.protocol["sha256"] == hashlib.sha256(open(nets["i3d"], "rb").read()).hexdigest()
    assert net.protocol["call"] == "detector(videos, rescale=True, resize=True, return_features=True)"


def test_inception_frames_go_through_clean_fid_at_299(nets):
    """Guards the FID preprocessing: every frame, clean-fid's PIL-bicubic resize to 299, RGB, [0, 255] into
    clean-fid's wrapper (the network sees (x - 128) / 128)."""
    pytest.importorskip("cleanfid")
    from ls_video.metrics.inception import Inception

    out = Inception(nets["inception"]).frames([solid((192, 64, 0), frames=3), solid((0, 0, 255), frames=2)])
    assert out.shape == (5, 2048)
    p = probe(out[0])
    assert (p["height"], p["width"]) == (299, 299)
    assert [p["mean_r"], p["mean_g"], p["mean_b"]] == pytest.approx([0.5, -0.5, -1.0], abs=1e-5)
    assert probe(out[4])["mean_b"] == pytest.approx(127 / 128, abs=1e-5)


def test_c3d_probabilities_and_the_inception_score_formula(nets):
    """Guards the video IS: C3D gets uint8 16-frame clips and the IS is exp(E KL) per split (K balanced
    one-hot classes give K; identical rows give 1)."""
    from ls_video.metrics.i3d import C3D, inception_score

    probs = C3D(nets["c3d"])([solid((10, 20, 30), frames=16)] * 2)
    assert probs.shape == (2, 101) and np.allclose(probs.sum(1), 1, atol=1e-5)
    one_hot = np.eye(5)[np.arange(20) % 5]
    assert inception_score(one_hot, num_splits=1)[0] == pytest.approx(5.0)
    assert inception_score(np.full((20, 5), 0.2), num_splits=10) == pytest.approx((1.0, 0.0))


# --- the distance -------------------------------------------------------------------------------------------


def test_fvd_of_identical_sets_is_zero_and_a_shift_gives_the_closed_form(nets):
    """Guards FVD through the I3D path: the same clips give 0; the clips brightened by d (no clipping) move
    197 linear features (3 channel means, min, max, 192 grid means) by 2d/255 with the covariance unchanged,
    so the distance is exactly 197 (2d/255)^2."""
    from ls_video.metrics.frechet import frechet_distance_of
    from ls_video.metrics.i3d import I3D

    rng = np.random.default_rng(0)
    videos = [rng.integers(40, 200, size=(4, 8, 8, 3), dtype=np.uint8) for _ in range(12)]
    net = I3D(nets["i3d"])
    a = net(videos)
    assert frechet_distance_of(a, a, biased=True) == pytest.approx(0.0, abs=1e-9)
    b = net([v + np.uint8(20) for v in videos])
    assert frechet_distance_of(a, b, biased=True) == pytest.approx(197 * (40 / 255) ** 2, rel=1e-4)


def test_stylegan_v_covariance_is_divided_by_n():
    """Guards the FVD's covariance: StyleGAN-V divides by N. For y = 2x the squared distance is
    |mean x|^2 + tr(S_x) with S_x the 1/N covariance (the 1/(N-1) one is 10 % larger at N = 10)."""
    from ls_video.metrics.frechet import frechet_distance_of

    x = np.random.default_rng(1).normal(size=(10, 3))
    expected = float((x.mean(0) ** 2).sum() + np.trace(np.cov(x.T, bias=True)))
    assert frechet_distance_of(x, 2 * x, biased=True) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance_of(x, 2 * x) == pytest.approx(float((x.mean(0) ** 2).sum() + np.trace(np.cov(x.T))))


# --- the protocols ------------------------------------------------------------------------------------------


def test_ucf101_prompts_follow_the_class_distribution(tmp_path):
    """Guards the UCF-101 sampling: one prompt per class in words, samples in proportion to each class's
    videos (largest remainder: sums to the count, each class within one sample of its share)."""
    from ls_video.metrics.protocols import allocate, class_prompt, ucf101_plan

    assert class_prompt("ApplyEyeMakeup") == "apply eye makeup" and class_prompt("YoYo") == "yo yo"
    assert class_prompt("PlayingDaf") == "playing daf" and class_prompt("TaiChi") == "tai chi"
    counts = {"ApplyEyeMakeup": 145, "Archery": 145, "YoYo": 128, "BandMarching": 155, "Basketball": 134}
    share = allocate(counts, 2048)
    assert sum(share.values()) == 2048
    for c, n in counts.items():
        assert abs(share[c] - 2048 * n / sum(counts.values())) < 1
    for cls, n in (("ApplyEyeMakeup", 6), ("YoYo", 2), ("Basketball", 4)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            (tmp_path / cls / f"v_{cls}_g{i:02d}_c01.avi").write_bytes(b"")
    rows, info = ucf101_plan(str(tmp_path), 6, seed=7)
    assert info["samples_per_class"] == {"ApplyEyeMakeup": 3, "Basketball": 2, "YoYo": 1}
    assert [r["prompt"] for r in rows].count("apply eye makeup") == 3
    assert [r["seed"] for r in rows] == list(range(7, 13)) and [r["index"] for r in rows] == list(range(6))


def test_msrvtt_one_caption_per_test_video(tmp_path):
    """Guards the MSR-VTT prompts: the official JSON's test split only, one caption per video, videos in
    numeric id order, ``random`` seeded and reproducible."""
    from ls_video.metrics.protocols import msrvtt_captions

    videos = [{"video_id": f"video{i}", "split": "test" if i >= 3 else "train"} for i in range(12)]
    sentences = [{"video_id": f"video{i}", "caption": f"caption {k} of {i}"} for i in range(12) for k in range(20)]
    path = tmp_path / "test_videodatainfo.json"
    path.write_text(json.dumps({"videos": videos, "sentences": sentences}))
    first = msrvtt_captions(str(path), choice="first")
    assert [r["video_id"] for r in first] == [f"video{i}" for i in range(3, 12)]
    assert all(r["caption"] == f"caption 0 of {r['video_id'][5:]}" for r in first)
    rand = msrvtt_captions(str(path), seed=3)
    assert rand == msrvtt_captions(str(path), seed=3) and rand != msrvtt_captions(str(path), seed=4)
    assert len({r["caption"].split()[1] for r in rand}) > 1


# --- the commands end to end --------------------------------------------------------------------------------


def toy_dataset(root, classes=("MovingLeft", "MovingRight", "YoYo"), per_class=(3, 2, 1), frames=17):
    world = ToyWorld(size=32, num_frames=frames, object_size=8)
    clips = iter(world.clips(sum(per_class), "val", seed=5))
    for cls, n in zip(classes, per_class, strict=True):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            write_video(root / cls / f"v_{cls}_g{i:02d}_c01.mp4", world.render(next(clips)))
    return str(root)


def test_help_documents_every_option():
    """Guards ``ls-video benchmark ucf101|msrvtt --help``: every option has a help text."""
    from ls_video.commands.benchmark import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {"ucf101", "msrvtt"}
    for parser in sub.choices.values():
        options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
        assert len(options) > 20
        assert all(a.help for a in options), [a.dest for a in options if not a.help]


@pytest.mark.slow  # 10-35 s on 2 busy cores (make test runs it)
def test_ucf101_benchmark_end_to_end_resumes_after_a_kill(nets, tmp_path, monkeypatch, capsys):
    """Guards the UCF-101 command on the toy base: a run killed after two samples leaves whole files only;
    run again, it makes only the missing ones, then writes benchmark.json with the full protocol and the
    table row. Other options in the same folder are a one-line error. (FID too where clean-fid is installed.)"""
    from ls_video.commands import benchmark

    videos = toy_dataset(tmp_path / "ucf")
    out = tmp_path / "out"
    argv = ["ucf101", "--model", TOY_BASE, "--videos", videos, "--out", str(out), "--num-samples", "4",
            "--num-inference-steps", "1", "--batch-size", "1", "--device", "cpu", "--seed", "3",
            "--i3d", nets["i3d"], "--c3d", nets["c3d"], *(["--inception", nets["inception"]] if HAS_CLEANFID else []),
            "--is-splits", "2"]
    real_save, written = benchmark.save_sample, []

    def killed_after_two(path, video, fps):
        if len(written) == 2:
            raise KeyboardInterrupt  # a kill between two samples
        real_save(path, video, fps)
        written.append(path)

    monkeypatch.setattr(benchmark, "save_sample", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        benchmark.main(argv)
    kept = sorted(os.listdir(out / "samples"))
    assert kept == ["00000.mp4", "00001.mp4"]
    stamps = {name: os.stat(out / "samples" / name).st_mtime_ns for name in kept}
    (out / "samples" / "00002.part.mp4").write_bytes(b"half a video")  # a kill during a write

    def counting(path, video, fps):
        real_save(path, video, fps)
        written.append(path)

    monkeypatch.setattr(benchmark, "save_sample", counting)
    assert benchmark.main(argv) == 0
    assert [os.path.basename(p) for p in written[2:]] == ["00002.mp4", "00003.mp4"]
    assert {n: os.stat(out / "samples" / n).st_mtime_ns for n in kept} == stamps
    assert sorted(os.listdir(out / "samples")) == [f"{i:05d}.mp4" for i in range(4)]
    result = json.loads((out / "benchmark.json").read_text())
    m, proto = result["metrics"], result["protocol"]
    assert {"fvd", "is", "is_std"} <= set(m) and m["fvd"] >= 0 and ("fid" in m) == HAS_CLEANFID
    assert proto["samples_per_class"] == {"MovingLeft": 2, "MovingRight": 1, "YoYo": 1}
    assert (proto["num_generated"], proto["num_real"], proto["num_frames"], proto["frame_stride"]) == (4, 4, 16, 1)
    assert proto["resolution"] == [32, 32] and proto["generation"]["seeds"] == "seed + index: 3..6"
    assert proto["generation"]["num_inference_steps"] == 1 and proto["generation"]["scheduler"] == "ddim"
    assert proto["fvd"]["name"] == "fvd4_16f"
    assert proto["fvd"]["sha256"] == hashlib.sha256(open(nets["i3d"], "rb").read()).hexdigest()
    assert len(proto["is"]["sha256"]) == 64 and (not HAS_CLEANFID or len(proto["fid"]["sha256"]) == 64)
    assert "| Latent-Shift (this run) |" in capsys.readouterr().out
    assert benchmark.main(argv[:-2] + ["--is-splits", "2", "--guidance-scale", "3"]) == 2
    assert "another benchmark run" in capsys.readouterr().err


def test_msrvtt_benchmark_end_to_end(nets, tiny_clip, tmp_path, capsys):
    """Guards the MSR-VTT command on the toy base: one caption per test video as prompt, CLIPSIM, CLIP-FID
    and FVD against the test videos, the table row."""
    from ls_video.commands.benchmark import main

    world = ToyWorld(size=32, num_frames=6, object_size=8)
    clips = world.clips(4, "val", seed=2)
    (tmp_path / "vtt").mkdir()
    for i, c in enumerate(clips):
        write_video(tmp_path / "vtt" / f"video{i}.mp4", world.render(c))
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"videos": [{"video_id": f"video{i}", "split": "test" if i else "val"} for i in range(4)],
                               "sentences": [{"video_id": f"video{i}", "caption": c.caption}
                                             for i, c in enumerate(clips)]}))
    out = tmp_path / "out"
    assert main(["msrvtt", "--model", TOY_BASE, "--annotations", str(ann), "--videos", str(tmp_path / "vtt"),
                 "--out", str(out), "--num-frames", "4", "--num-inference-steps", "1", "--batch-size", "3",
                 "--device", "cpu", "--format", "npy", "--i3d", nets["i3d"], "--clip-model", tiny_clip]) == 0
    result = json.loads((out / "benchmark.json").read_text())
    assert {"clipsim", "clip_fid", "fvd"} <= set(result["metrics"])
    assert -1 <= result["metrics"]["clipsim"] <= 1 and result["metrics"]["clip_fid"] >= 0
    proto = result["protocol"]
    assert proto["num_generated"] == 3 and proto["videos_in_split"] == 3 and proto["caption"] == "random"
    plan = json.loads((out / "plan.json").read_text())
    assert [r["prompt"] for r in plan["rows"]] == [c.caption for c in clips[1:]]
    assert np.load(out / "samples" / "00000.npy", allow_pickle=False).shape == (4, 32, 32, 3)
    assert "| Method | CLIPSIM | CLIP-FID | FVD |" in capsys.readouterr().out


def test_eval_uses_the_published_networks_when_given_their_files(nets, tmp_path):
    """Guards ``ls-video eval``: a TorchScript ``--fvd-model`` is StyleGAN-V's I3D (1/N covariance) and a
    TorchScript ``--fid-model`` clean-fid's Inception (where installed); the samples against themselves give 0."""
    from ls_video.commands.eval import main as eval_main

    world = ToyWorld(size=32, num_frames=4, object_size=8)
    rows = []
    for i, c in enumerate(world.clips(3, "val", seed=1)):
        write_video(tmp_path / f"{i}.mp4", world.render(c))
        rows.append({"prompt": c.caption, "seed": i, "file": f"{i}.mp4"})
    (tmp_path / "manifest.json").write_text(json.dumps({"samples": rows}))
    fid = ["--fid-model", nets["inception"]] if HAS_CLEANFID else []
    assert eval_main([str(tmp_path), "--metrics", "fvd,fid" if fid else "fvd", "--fvd-model", nets["i3d"], *fid,
                      "--reference", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert result["fvd"] == pytest.approx(0, abs=1e-9)
    assert result["protocol"]["fvd"]["call"].startswith("detector(videos, rescale=True")
    assert result["protocol"]["fvd"]["sha256"] == hashlib.sha256(open(nets["i3d"], "rb").read()).hexdigest()
    if fid:
        assert result["fid"] == pytest.approx(0, abs=1e-9)
        assert result["protocol"]["fid"]["library"].startswith("clean-fid")


def test_fewer_samples_than_features_is_exact_and_fast():
    """Guards the Fréchet distance of small sets (N < D, as with 2048-d Inception features in tests): it is the
    nuclear norm route, exact where eigenvalues of the singular covariance product gave about -1e-6 for identical
    sets, and equal to the full computation otherwise."""
    from ls_video.metrics.frechet import feature_stats, frechet_distance, frechet_distance_of

    rng = np.random.default_rng(0)
    a = rng.normal(size=(12, 2048))
    assert frechet_distance_of(a, a) == pytest.approx(0.0, abs=1e-9)
    a, b = rng.normal(size=(30, 50)), rng.normal(size=(20, 50)) * 1.5 + 0.3
    for biased in (False, True):
        full = frechet_distance(*feature_stats(a, biased), *feature_stats(b, biased))
        assert frechet_distance_of(a, b, biased) == pytest.approx(full, rel=1e-6)


def test_ranks_split_the_samples(nets, tmp_path):
    """Guards generation on several processes: rank r of w makes the samples whose index is r mod w, and rank 0
    scores once every sample is there."""
    from ls_video.commands.benchmark import main

    videos = toy_dataset(tmp_path / "ucf", per_class=(2, 1, 1), frames=4)
    out = tmp_path / "out"
    argv = ["ucf101", "--model", TOY_BASE, "--videos", videos, "--out", str(out), "--num-samples", "4",
            "--num-frames", "3", "--num-inference-steps", "1", "--device", "cpu", "--world-size", "2",
            "--i3d", nets["i3d"]]
    assert main(argv + ["--rank", "1"]) == 0
    assert sorted(os.listdir(out / "samples")) == ["00001.mp4", "00003.mp4"] and not (out / "benchmark.json").exists()
    assert main(argv + ["--rank", "0", "--wait-timeout", "0"]) == 0
    assert len(os.listdir(out / "samples")) == 4
    assert "fvd" in json.loads((out / "benchmark.json").read_text())["metrics"]


@pytest.mark.slow  # a subprocess and two generations: 15-40 s on 2 busy cores (make test runs it)
def test_a_benchmark_killed_by_sigkill_continues(nets, tmp_path):
    """Guards resume after a real kill (SIGKILL, no clean-up runs): the samples written before it stay, the run
    again with the same command makes only the others."""
    import signal
    import subprocess
    import sys
    import time

    from ls_video.commands.benchmark import main

    videos = toy_dataset(tmp_path / "ucf", per_class=(2, 1, 1), frames=4)
    out = tmp_path / "out"
    argv = ["ucf101", "--model", TOY_BASE, "--videos", videos, "--out", str(out), "--num-samples", "6",
            "--num-frames", "3", "--num-inference-steps", "2", "--batch-size", "1", "--device", "cpu",
            "--i3d", nets["i3d"]]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "ls_video.cli", "benchmark", *argv], env=env, cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (out / "samples" / "00000.mp4").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    done = sorted(p for p in os.listdir(out / "samples") if ".part" not in p)
    assert 1 <= len(done) < 6 and not (out / "benchmark.json").exists()
    stamps = {p: os.stat(out / "samples" / p).st_mtime_ns for p in done}
    assert main(argv) == 0
    assert {p: os.stat(out / "samples" / p).st_mtime_ns for p in done} == stamps
    assert sorted(p for p in os.listdir(out / "samples") if ".part" not in p) == [f"{i:05d}.mp4" for i in range(6)]
    assert "fvd" in json.loads((out / "benchmark.json").read_text())["metrics"]
