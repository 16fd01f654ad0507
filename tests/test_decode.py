"""Streaming clip decoding: frames picked by timestamp, nothing decoded past a clip, seeking, windows."""

import subprocess
import sys

import numpy as np
import pytest

from ls_video.datamodules.clips import ClipError, ClipSpec, load_clips
from ls_video.datamodules.decode import VideoReader
from ls_video.datamodules.synthetic_videos import index_level, write_synthetic_video

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
VFR_TIMES = [0.0, 0.03, 0.1, 0.18, 0.2, 0.45, 0.5, 0.52, 0.61, 0.9, 1.0, 1.07, 1.3, 1.31, 1.5]


def nearest(times, target):
    """Brute force: the index of the time nearest ``target`` (exact ties to the even index)."""
    return min(range(len(times)), key=lambda i: (round(abs(times[i] - target), 9), i % 2))


def levels(frames):
    return [int(round(float(f.mean()))) for f in frames]


def test_variable_frame_rate_picks_nearest_timestamps(tmp_path):
    path = write_synthetic_video(tmp_path / "vfr.mp4", len(VFR_TIMES), 32, 32, pattern="index", times=VFR_TIMES)
    with VideoReader(path, 16) as reader:
        clip = reader.clip(0.0, 8, fps=5)  # targets 0, 0.2, ..., 1.4 s
    expected = [nearest(VFR_TIMES, k / 5) for k in range(8)]
    assert clip.times == [VFR_TIMES[i] for i in expected]
    assert clip.indices == expected
    assert clip.frames.shape == (8, 16, 16, 3) and clip.frames.dtype == np.uint8
    assert np.allclose(levels(clip.frames), [index_level(i) for i in expected], atol=3)  # the right pixels too


def test_frame_stride_counts_frames_on_variable_frame_rate(tmp_path):
    path = write_synthetic_video(tmp_path / "vfr.mp4", len(VFR_TIMES), 32, 32, pattern="index", times=VFR_TIMES)
    with VideoReader(path, 32) as reader:
        clip = reader.clip(0.0, 5, stride=3)
    assert clip.indices == [0, 3, 6, 9, 12] and clip.times == [VFR_TIMES[i] for i in clip.indices]


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    """600 frames (24 s at 25 fps), a keyframe every 25 frames; frame i is flat grey index_level(i)."""
    path = tmp_path_factory.mktemp("long") / "long.mp4"
    return write_synthetic_video(path, 600, 32, 32, fps=25, pattern="index", keyint=25, preset="ultrafast")


def test_constant_rate_picks_match_rounded_frame_numbers(long_video):
    with VideoReader(long_video, 32) as reader:
        clip = reader.clip(0.0, 16, fps=8)  # k * 25 / 8 hits .5 at k = 4 (12.5) and k = 12 (37.5)
    assert clip.indices == [round(k * 25 / 8) for k in range(16)]
    assert clip.indices[4] == 12 and clip.indices[12] == 38


def test_frames_past_the_clip_are_never_decoded(long_video):
    with VideoReader(long_video, 32) as reader:
        clip = reader.clip(0.0, 8, fps=8)  # 0 .. 0.875 s -> frames 0 .. 22 of 600
    assert clip.indices == [round(k * 25 / 8) for k in range(8)]
    assert clip.decoded == 23  # up to the last picked frame (22, at 0.88 s >= its target): nothing after it
    assert reader.decoded == 23


def test_later_clip_seeks_to_a_keyframe(long_video):
    with VideoReader(long_video, 32) as reader:
        clip = reader.clip(12.0, 8, fps=8)  # frames 300 .. 322
    assert clip.indices[0] == 300 and clip.times[0] == 12.0
    assert clip.decoded <= 25 + 23  # from the keyframe before 12 s, not the 300 frames before it
    assert np.allclose(levels(clip.frames), [index_level(i) for i in clip.indices], atol=3)


def test_too_short_and_unreadable(tmp_path, long_video):
    with pytest.raises(ClipError, match="too_short"):
        load_clips(long_video, ClipSpec(num_frames=8, size=16, fps=None, frame_stride=100))
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all")
    with pytest.raises(ClipError, match="unreadable"):
        load_clips(str(tmp_path / "bad.mp4"), ClipSpec(num_frames=2, size=16))
    with pytest.raises(ClipError, match="missing"):
        load_clips(str(tmp_path / "none.mp4"), ClipSpec(num_frames=2, size=16))


def test_clips_per_video_windows_do_not_overlap(long_video):
    spec = ClipSpec(num_frames=8, size=16, fps=4, clips_per_video=4)  # a clip spans 1.75 s of 24 s
    clips, errors = load_clips(long_video, spec)
    assert not errors and len(clips) == 4
    metas = [m for _, m in clips]
    assert [m["clip"] for m in metas] == [0, 1, 2, 3]
    for a, b in zip(metas, metas[1:], strict=False):
        assert a["timestamps"][-1] < b["timestamps"][0]  # no frame shared, windows in order
    for m in metas:
        assert abs(m["timestamps"][0] - m["start"]) <= 0.02 and len(m["timestamps"]) == 8
    assert metas[0]["start"] == 0.0 and metas[-1]["timestamps"][-1] > 22.0  # spread over the whole video
    every = [m for _, m in load_clips(long_video, ClipSpec(num_frames=8, size=16, fps=4, clips_per_video=0))[0]]
    assert len(every) == 12  # 24 s / (8 frames / 4 fps) windows


def test_window_placement_policies():
    spec = ClipSpec(num_frames=10, fps=10, clip_start="middle")
    assert spec.window_starts(10.04, 25, "v") == [pytest.approx((10.0 - 0.9) / 2)]
    rand = ClipSpec(num_frames=10, fps=10, clip_start="random", clips_per_video=3, seed=1)
    a, b = rand.window_starts(20.0, 25, "a.mp4"), rand.window_starts(20.0, 25, "b.mp4")
    assert a == rand.window_starts(20.0, 25, "a.mp4") and a != b  # reproducible, per video
    for starts in (a, b):
        assert all(y - x >= 1.0 - 1e-6 for x, y in zip(starts, starts[1:], strict=False)) and starts[-1] <= 19.06
    assert ClipSpec(num_frames=10, fps=10, clips_per_video=5).window_starts(2.5, 25, "v") == [0.0, 1.56]
    with pytest.raises(ClipError, match="too_short"):
        ClipSpec(num_frames=10, fps=10, clip_start="middle").window_starts(0.5, 25, "v")
    with pytest.raises(ValueError, match="clip_start"):
        ClipSpec(clip_start="end")


@pytest.mark.slow
def test_memory_stays_bounded_on_a_long_video(tmp_path):
    """3000 frames of 256x256 would take 590 MB decoded; a clip from the middle must not come near."""
    path = write_synthetic_video(tmp_path / "long.mp4", 3000, 256, 256, fps=25, preset="ultrafast", keyint=50)
    code = ("import resource, sys; from ls_video.datamodules.clips import ClipSpec, load_clips; "
            "spec = ClipSpec(num_frames=16, size=64, fps=8, clip_start='middle'); "
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            "clips, _ = load_clips(sys.argv[1], spec); "
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.split()[-1]) < 100  # MB of growth


def test_random_start_is_reproducible_per_video(long_video, tmp_path):
    import shutil

    spec = ClipSpec(num_frames=4, size=16, fps=4, clip_start="random", seed=3)
    first = load_clips(long_video, spec)[0][0][1]
    moved = shutil.copy(long_video, tmp_path / "long.mp4")  # same file name elsewhere: same clip
    assert load_clips(moved, spec)[0][0][1]["start"] == first["start"] > 0
    other = shutil.copy(long_video, tmp_path / "other.mp4")
    assert load_clips(other, spec)[0][0][1]["start"] != first["start"]
    assert load_clips(long_video, ClipSpec(num_frames=4, size=16, fps=4, clip_start="random", seed=4))[0][0][1][
        "start"] != first["start"]
