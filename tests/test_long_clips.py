"""The wrapped toy world and its wrap-aware metrics (issue 36, item 7), and the long-clip study's script."""

import json

import numpy as np
import pytest

from ls_video.metrics.toy import count_objects, long_range, score, score_long, seam_ratio
from ls_video.toy.world import DIRECTIONS, ToyWorld

WORLD = ToyWorld(size=32, num_frames=8, object_size=8, max_speed=4, min_travel=0.6, wrap=True)  # the study's
LONG_KEYS = ("identity", "constant", "direction_all", "direction_late", "single")


def _long(direction: str, frames: int = 64, shape: str | None = None) -> tuple[np.ndarray, str]:
    rng = np.random.default_rng(0)
    clip = next(c for c in (WORLD.sample_clip(rng) for _ in range(2000))
                if c.direction == direction and shape in (None, c.shape))
    return np.stack([WORLD.render_frame(clip, p) for p in WORLD.positions(clip, frames)]), clip.caption


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_wrapped_64_frame_clip_keeps_moving_and_whole(direction):
    """Guards the wrapped rendering: the object crosses the edges (so 64 frames fit one direction) with all of
    its pixels in every frame, split over the edge rather than clipped."""
    video, _ = _long(direction)
    areas = (video.max(-1) > 0).sum((1, 2))
    assert len(set(areas.tolist())) == 1 and areas[0] > 0.7 * 8 * 8
    split = [(m.any(0)[0] and m.any(0)[-1]) or (m.any(1)[0] and m.any(1)[-1]) for m in video.max(-1) > 0]
    assert any(split)  # it did cross an edge


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_wrapped_ground_truth_scores_one(direction):
    """The wrap-aware mode scores a rendered 64-frame wrapped clip 1.0 for each direction; the plain mode does
    not (centroids jump across the frame at the seam), which is why the mode exists."""
    video, caption = _long(direction)
    got = score([video], [caption], wrap=True)
    assert got["direction_acc"] == got["step_acc"] == got["color_acc"] == got["shape_acc"] == 1.0, got
    long = score_long([video], [caption], wrap=True)
    assert all(long[k] == 1.0 for k in LONG_KEYS), long
    assert score([video], [caption])["step_acc"] < 1.0


def test_wrapped_validation_clips_score_one_at_every_length():
    clips = WORLD.clips(32, "val", seed=1000)
    for frames in (8, 16, 32, 64):
        videos = [np.stack([WORLD.render_frame(c, p) for p in WORLD.positions(c, frames)]) for c in clips]
        got = score(videos, [c.caption for c in clips], wrap=True)
        assert got["direction_acc"] == got["step_acc"] == got["shape_acc"] == 1.0, (frames, got)
        long = score_long(videos, [c.caption for c in clips], wrap=True)
        assert all(long[k] == 1.0 for k in LONG_KEYS), (frames, long)


def test_wrapped_reversal_still_fails():
    """Wrap-awareness must not make every clip pass: a clip that turns back at frame 32 is not constant and
    its second half goes the wrong way."""
    video, caption = _long("left")
    video = np.concatenate([video[:33], video[31:0:-1]])
    got = long_range(video, "left", wrap=True)
    assert not got["constant"] and not got["direction_late"] and got["single"]


def test_object_over_the_edge_is_one_object_only_on_a_torus():
    mask = np.zeros((32, 32), bool)
    mask[10:18, :4] = mask[10:18, -4:] = True
    assert count_objects(mask) == 2 and count_objects(mask, wrap=True) == 1


def test_seam_ratio_is_one_for_a_loop_and_larger_for_a_jump():
    """64 frames at 3 px/frame cross the 32-px torus exactly 6 times: the last-to-first step is one more step."""
    video, _ = _long("right")
    assert seam_ratio(video) == pytest.approx(1.0)
    assert seam_ratio(video[:16]) > 1.5  # 16 frames end half a frame away from the start
    assert seam_ratio(np.stack([video[0]] * 4)) == 0.0


def test_default_world_is_not_wrapped_and_keeps_its_cache_key():
    """wrap=False (default) leaves the world's clips inside the frame and the data cache's settings unchanged
    (no ``wrap`` key, so existing caches are reused); wrap=True changes them."""
    from ls_video.datamodules.toy import ToyDataModule

    settings = {}
    for wrap in (False, True):
        dm = ToyDataModule(base="assets/toy-base", world=dict(size=32, num_frames=8, object_size=8, wrap=wrap))
        settings[wrap] = dm.settings["world"]
    assert "wrap" not in settings[False] and settings[True]["wrap"] is True


@pytest.mark.slow
def test_study_script_runs_on_a_tiny_budget(tiny_base, tmp_path, monkeypatch):
    """The study (``python -m ls_video.toy.long_clips``) end to end: 2 training steps per arm on the tiny base,
    one length past the training length, one prompt; every row is scored and timed, finished arms are reused."""
    import os

    from ls_video.toy.long_clips import main

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "long"
    args = ["--out", str(out), "--steps", "2", "--num-train-clips", "8", "--cache-dir", str(tmp_path / "cache"),
            "--prompts", "a red square moving left", "--num-inference-steps", "2",
            "--model.pretrained_model_name_or_path", tiny_base, "--data.init_args.num_val_clips", "2",
            "--data.init_args.batch_size", "2", "--data.init_args.shard_size", "4",
            "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
            "--trainer.enable_progress_bar", "false"]
    assert main([*args, "--frames", "9"]) == 0
    result = json.loads((out / "long.json").read_text())
    assert {r["model"] for r in result["rows"]} == {"ground truth", "shift", "temporal_attention"}
    sampled = [r for r in result["rows"] if r["model"] != "ground truth"]
    assert len(sampled) == 2 and all(r["n"] == 1 and r["seconds_per_video"] > 0 and r["peak_mib"] > 0
                                     for r in sampled)
    assert all(run["steps"] == 2 for run in result["runs"].values())
    mtime = os.path.getmtime(result["runs"]["shift"]["checkpoint"])
    assert main([*args, "--frames", "3", "--arms", "shift"]) == 0
    assert os.path.getmtime(result["runs"]["shift"]["checkpoint"]) == mtime  # reused, not retrained


def test_study_script_user_errors_are_one_line(capsys, tmp_path):
    from ls_video.toy.long_clips import main

    assert main(["--out", str(tmp_path), "--frames", "1"]) == 2
    assert "--frames must be >= 2" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--seed", "3"]) == 2  # a typo is not passed on to train.py as an override
    assert "unknown arguments ['--seed']" in capsys.readouterr().err
