import json

import numpy as np
import pytest

from ls_video.toy.world import COLORS, ToyWorld, all_prompts
from ls_video.video_io import read_video


def test_clips_from_mp4_have_the_object_where_generated(tmp_path):
    world = ToyWorld()
    paths = world.write_videos(tmp_path, 6, "train", seed=3)
    for path in paths:
        truth = json.loads(open(path.replace(".mp4", ".json")).read())
        frames, fps = read_video(path)
        assert frames.shape == (16, 64, 64, 3) and fps == 8
        assert open(path.replace(".mp4", ".txt")).read() == \
            f"a {truth['color']} {truth['shape']} moving {truth['direction']}"
        for frame, (x, y) in zip(frames, truth["positions"], strict=True):
            mask = frame.max(-1) > 60
            ys, xs = np.nonzero(mask)
            half = world.object_size / 2
            assert abs(xs.mean() + 0.5 - (x + half)) < 1.0 and abs(ys.mean() + 0.5 - (y + half)) < 1.0
            color = frame[mask].astype(int).mean(0)
            assert np.abs(color - COLORS[truth["color"]]).max() < 30


def test_motion_stays_inside_and_travels_a_quarter():
    world = ToyWorld()
    for clip in world.clips(200, "train", seed=0):
        xs, ys = zip(*clip.positions, strict=True)
        assert min(xs) >= 0 and min(ys) >= 0 and max(xs) + 16 <= 64 and max(ys) + 16 <= 64
        travel = abs(xs[-1] - xs[0]) + abs(ys[-1] - ys[0])
        assert travel >= 64 / 4


def test_seed_fixes_everything_and_splits_are_disjoint():
    world = ToyWorld()
    a = [c.key() for c in world.clips(300, "train", seed=1)]
    assert a == [c.key() for c in world.clips(300, "train", seed=1)]
    val = {c.key() for c in world.clips(100, "val", seed=1)}
    assert not set(a) & val


def test_prompts_and_images():
    assert len(all_prompts()) == 32 and "a red square moving left" in all_prompts()
    frames, captions = ToyWorld(size=32, num_frames=4, object_size=8).images(5)
    assert frames.shape == (5, 32, 32, 3) and all(c.count(" ") == 2 for c in captions)


def test_impossible_world_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot travel"):
        ToyWorld(size=16, object_size=14).speeds()
