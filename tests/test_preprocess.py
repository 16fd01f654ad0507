import io
import json
import subprocess
import sys

import numpy as np
import pytest
import webdataset as wds

from datamodules.preprocess import preprocess
from ls_video.toy.world import ToyWorld

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture()
def videos(tmp_path):
    world = ToyWorld(size=32, num_frames=8, object_size=8)
    folder = tmp_path / "videos"
    paths = world.write_videos(folder, 7, "train")
    # planted bad inputs: truncated, empty, too short
    data = open(paths[0], "rb").read()
    (folder / "zz_truncated.mp4").write_bytes(data[: len(data) // 2])
    (folder / "zz_truncated.txt").write_text("a truncated clip")
    (folder / "zz_empty.mp4").write_bytes(b"")
    short = ToyWorld(size=32, num_frames=3, object_size=8, min_travel=0.1)
    from ls_video.video_io import write_video
    write_video(folder / "zz_short.mp4", short.render(short.clips(1)[0]))
    return folder


def read_shards(out):
    samples = []
    for shard in sorted(out.glob("shard-*.tar")):
        for s in wds.WebDataset(str(shard), shardshuffle=False, empty_check=False):
            samples.append(s)
    return samples


def test_writes_shards_and_reports_bad_videos(videos, tiny_base, tmp_path):
    out = tmp_path / "shards"
    report = preprocess(str(videos), tiny_base, str(out), num_frames=8, fps=None, frame_stride=1, size=32,
                        shard_size=4, num_workers=0, accelerator="cpu")
    assert report["written"] == 7 and report["skipped"] == 3
    assert report["skipped_by_reason"] == {"unreadable": 2, "too_short": 1}
    samples = read_shards(out)
    assert len(samples) == 7
    latents = np.load(io.BytesIO(samples[0]["latents.npy"]), allow_pickle=False)
    assert latents.dtype == np.float16 and latents.shape == (8, 4, 16, 16)
    meta = json.loads(samples[0]["json"])
    assert meta["scaled"] is False and meta["scaling_factor"] == 0.18215 and len(meta["frame_indices"]) == 8
    assert samples[0]["txt"].decode().startswith("a ")
    index = json.loads((out / "index.json").read_text())
    assert sum(s["samples"] for s in index["shards"]) == 7 and not list(out.glob("*.tmp"))


def test_rerun_skips_finished_shards(videos, tiny_base, tmp_path):
    out = tmp_path / "shards"
    kw = dict(num_frames=8, fps=None, frame_stride=1, size=32, shard_size=4, num_workers=0, accelerator="cpu")
    preprocess(str(videos), tiny_base, str(out), **kw)
    first = (out / "shard-000000.tar").stat().st_mtime_ns
    (out / "shard-000001.tar").unlink()
    report = preprocess(str(videos), tiny_base, str(out), **kw)
    assert (out / "shard-000000.tar").stat().st_mtime_ns == first
    assert (out / "shard-000001.tar").exists() and report["written"] == 7


def test_csv_source_and_cli(videos, tiny_base, tmp_path):
    csv = tmp_path / "list.csv"
    csv.write_text("path,caption\n" + "".join(f"videos/train_{i:06d}.mp4,clip {i}\n" for i in range(3)))
    r = subprocess.run([sys.executable, "-m", "datamodules.preprocess", "--videos", str(csv), "--vae", tiny_base,
                        "--out", str(tmp_path / "o"), "--num-frames", "4", "--fps", "4", "--size", "16",
                        "--num-workers", "0", "--accelerator", "cpu"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    samples = read_shards(tmp_path / "o")
    assert [s["txt"].decode() for s in samples] == ["clip 0", "clip 1", "clip 2"]
    assert json.loads(samples[0]["json"])["frame_indices"] == [0, 2, 4, 6]  # 8 fps -> 4 fps


def test_webvid_csv_adapter(tmp_path):
    from datamodules.sources import list_sources

    csv = tmp_path / "webvid.csv"
    csv.write_text("videoid,name,page_dir\n1066,a dog runs,x\n")
    [src] = list_sources(str(csv), video_dir="/data/webvid")
    assert src.path == "/data/webvid/1066.mp4" and src.caption == "a dog runs"


def test_missing_source_is_one_line(tiny_base, tmp_path):
    r = subprocess.run([sys.executable, "-m", "datamodules.preprocess", "--videos", "/no/such", "--vae", tiny_base,
                        "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr
