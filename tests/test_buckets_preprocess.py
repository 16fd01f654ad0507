"""Bucketed preprocessing (issue #27): ``--buckets`` / ``--frame-buckets`` on PyAV-written videos of many shapes."""

import json
import subprocess
import sys

import pytest
from test_preprocess import ROOT, read_shards

from ls_video.datamodules.buckets import Bucket, crop_fraction, nearest_bucket, parse_buckets, parse_frame_buckets
from ls_video.datamodules.decode import output_size
from ls_video.datamodules.preprocess import preprocess
from ls_video.datamodules.synthetic_videos import write_synthetic_video
from ls_video.errors import UsageError

BUCKETS = "32x32,48x32,32x48,64x16"  # square, landscape 3:2, portrait 2:3, and a 4:1 no video is near
# name: (width, height, frames at 25 fps) -> the bucket it must land in (frame buckets 8, 4 at 8 fps)
VIDEOS = {
    "portrait": (36, 64, 50, "32x48x8"),
    "landscape": (64, 36, 50, "48x32x8"),
    "square": (48, 48, 50, "32x32x8"),
    "ultrawide": (86, 36, 50, "48x32x8"),  # 2.39:1 is nearer 3:2 than 4:1 in log aspect ratio
    "nearsquare": (50, 38, 50, "48x32x8"),  # 1.32:1
    "short": (40, 40, 15, "32x32x4"),  # 0.6 s: cannot span 8 frames at 8 fps (0.875 s), can span 4 (0.375 s)
}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mixed")
    for i, (name, (w, h, n, _)) in enumerate(VIDEOS.items()):
        write_synthetic_video(folder / f"{name}.mp4", n, w, h, fps=25, seed=i)
        (folder / f"{name}.txt").write_text(f"a {name} video")
    write_synthetic_video(folder / "tiny.mp4", 3, 32, 32, fps=25)  # 0.12 s: shorter than every frame bucket
    (folder / "tiny.txt").write_text("a tiny video")
    (folder / "broken.mp4").write_bytes(b"\x00not a video" * 10)
    (folder / "broken.txt").write_text("a broken video")
    return folder


def test_parsing_and_geometry():
    """Parsing, nearest bucket by log aspect ratio, cover-then-crop sizes (a bug that crops both sides, or
    that picks by linear aspect difference, fails here)."""
    assert parse_buckets("320x192, 192x320") == (Bucket(320, 192), Bucket(192, 320))
    assert parse_frame_buckets("16,24,16") == (24, 16)
    for bad in ("320", "320x", "0x10", "axb"):
        with pytest.raises(UsageError, match="WIDTHxHEIGHT"):
            parse_buckets(bad)
    with pytest.raises(UsageError):
        parse_frame_buckets("16,0")
    buckets = parse_buckets("256x256,512x256")
    # 1.45:1 -> log distance 0.37 to 1:1 and 0.32 to 2:1 (linear distance would pick 1:1)
    assert nearest_bucket(1000, 1450, buckets) == Bucket(512, 256)
    assert output_size(64, 36, (48, 32)) == (57, 32)  # portrait covers a portrait bucket: width fits exactly
    assert output_size(1080, 1920, 256) == (256, 455)  # the square path is the short side to 256, as before
    assert crop_fraction(1080, 1920, Bucket(256, 256)) == pytest.approx(0.4375)  # 16:9 in a square loses 44%
    assert crop_fraction(1080, 1920, Bucket(448, 256)) == pytest.approx(0.0156)  # 7:4 bucket


def test_mixed_shapes_land_in_their_buckets_and_nothing_is_lost(mixed, tiny_base, tmp_path):
    """Every video is in exactly one bucket or named in the report with its reason; latents have the bucket's
    shape (tiny VAE: /2); the short video gets the shorter frame bucket instead of being dropped."""
    out = tmp_path / "shards"
    report = preprocess(str(mixed), tiny_base, str(out), num_frames=99, fps=8, size=32, shard_size=3,
                        num_workers=2, batch_size=2, accelerator="cpu", buckets=parse_buckets(BUCKETS),
                        frame_buckets=parse_frame_buckets("4,8"))
    samples = {json.loads(s["json"])["source"].rsplit("/", 1)[-1][:-4]: s for s in read_shards(out)}
    assert sorted(samples) == sorted(VIDEOS)
    for name, (_, _, _, bucket) in VIDEOS.items():
        meta = json.loads(samples[name]["json"])
        w, h, f = map(int, bucket.split("x"))
        assert meta["bucket"] == bucket, name
        assert meta["latent_shape"] == [f, 4, h // 2, w // 2] and meta["num_frames"] == f
        assert len(meta["timestamps"]) == f and meta["buckets"] == BUCKETS.split(",")
    assert json.loads(samples["square"]["json"])["crop_fraction"] == 0.0
    assert report["buckets"] == {"48x32x8": {"samples": 3, "latent_shape": [8, 4, 16, 24]},
                                 "32x48x8": {"samples": 1, "latent_shape": [8, 4, 24, 16]},
                                 "32x32x8": {"samples": 1, "latent_shape": [8, 4, 16, 16]},
                                 "32x32x4": {"samples": 1, "latent_shape": [4, 4, 16, 16]}}
    assert report["empty_buckets"] == ["64x16"]
    skipped = {s["source"].rsplit("/", 1)[-1]: s for s in report["skipped_files"]}
    assert {k: v["reason"] for k, v in skipped.items()} == {"tiny.mp4": "too_short", "broken.mp4": "unreadable"}
    assert "shortest frame bucket (4 frames)" in skipped["tiny.mp4"]["detail"]
    assert report["written"] + report["skipped"] == len(list(mixed.glob("*.mp4")))
    index = json.loads((out / "index.json").read_text())
    assert index["buckets"] == report["buckets"] and index["settings"]["frame_buckets"] == [8, 4]


def test_without_buckets_nothing_changes(mixed, tiny_base, tmp_path):
    """No ``--buckets``: squares of ``size`` and ``num_frames`` as before, no bucket keys anywhere."""
    out = tmp_path / "plain"
    report = preprocess(str(mixed), tiny_base, str(out), num_frames=8, fps=8, size=32, num_workers=0,
                        accelerator="cpu")
    assert "buckets" not in report and report["skipped_by_reason"] == {"too_short": 2, "unreadable": 1}
    for s in read_shards(out):
        meta = json.loads(s["json"])
        assert meta["latent_shape"] == [8, 4, 16, 16] and "bucket" not in meta and "buckets" not in meta
    assert "buckets" not in json.loads((out / "index.json").read_text())


def test_cli_prints_clips_per_bucket_and_names_the_drops(mixed, tiny_base, tmp_path):
    r = subprocess.run([sys.executable, "-m", "ls_video.datamodules.preprocess", "--videos", str(mixed), "--vae",
                        tiny_base,
                        "--out", str(tmp_path / "o"), "--buckets", BUCKETS, "--frame-buckets", "8,4", "--fps", "8",
                        "--num-workers", "0", "--accelerator", "cpu"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "48x32x8: 3 clips, latents (8, 4, 16, 24)" in r.stdout and "no clip in: 64x16" in r.stdout
    assert "tiny.mp4: too_short" in r.stdout and "broken.mp4: unreadable" in r.stdout


def test_buckets_the_vae_cannot_encode_are_one_line(mixed, tiny_base, tmp_path):
    """The tiny VAE halves the frame: a 33-pixel side would give a latent that decodes to 34 pixels."""
    with pytest.raises(UsageError, match="33x32: width and height must be multiples of 2"):
        preprocess(str(mixed), tiny_base, str(tmp_path / "o"), buckets=parse_buckets("32x32,33x32"), num_workers=0,
                   accelerator="cpu")
