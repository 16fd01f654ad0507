import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import webdataset as wds

from ls_video.datamodules.preprocess import preprocess
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
    from diffusers import AutoencoderKL

    from ls_video.components import vae_fingerprint

    vae = AutoencoderKL.from_pretrained(tiny_base, subfolder="vae")  # what training compares with
    assert meta["vae_fingerprint"] == vae_fingerprint(vae) and meta["latent_channels"] == 4
    assert meta["latent_shape"] == [8, 4, 16, 16]
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
    r = subprocess.run([sys.executable, "-m", "ls_video.datamodules.preprocess", "--videos", str(csv), "--vae",
                        tiny_base,
                        "--out", str(tmp_path / "o"), "--num-frames", "4", "--fps", "4", "--size", "16",
                        "--num-workers", "0", "--accelerator", "cpu"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "Tip:" not in r.stdout + r.stderr and "deprecated" not in r.stderr, r.stderr  # no product tips/noise
    samples = read_shards(tmp_path / "o")
    assert [s["txt"].decode() for s in samples] == ["clip 0", "clip 1", "clip 2"]
    assert json.loads(samples[0]["json"])["frame_indices"] == [0, 2, 4, 6]  # 8 fps -> 4 fps


def test_webvid_csv_adapter(tmp_path):
    from ls_video.datamodules.sources import list_sources

    csv = tmp_path / "webvid.csv"
    csv.write_text("videoid,name,page_dir\n1066,a dog runs,x\n")
    [src] = list_sources(str(csv), video_dir="/data/webvid")
    assert src.path == "/data/webvid/1066.mp4" and src.caption == "a dog runs"


def test_missing_source_is_one_line(tiny_base, tmp_path):
    r = subprocess.run([sys.executable, "-m", "ls_video.datamodules.preprocess", "--videos", "/no/such", "--vae",
                        tiny_base,
                        "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr


def test_clips_per_video_samples_carry_their_start(tmp_path, tiny_base):
    from ls_video.datamodules.synthetic_videos import write_synthetic_video

    folder = tmp_path / "long"
    folder.mkdir()
    for i in range(2):
        write_synthetic_video(folder / f"v{i}.mp4", 100, 32, 32, fps=25, seed=i)  # 4 s
        (folder / f"v{i}.txt").write_text(f"video {i}")
    out = tmp_path / "shards"
    report = preprocess(str(folder), tiny_base, str(out), num_frames=4, fps=4, size=32, num_workers=0,
                        accelerator="cpu", clips_per_video=3)
    samples = read_shards(out)
    assert report["written"] == 6 and len(samples) == 6 and report["skipped"] == 0
    assert [s["__key__"] for s in samples][:3] == ["000000000_000", "000000000_001", "000000000_002"]
    metas = [json.loads(s["json"]) for s in samples[:3]]
    assert [m["clip"] for m in metas] == [0, 1, 2] and metas[0]["start"] == 0.0
    for a, b in zip(metas, metas[1:], strict=False):
        assert a["timestamps"][-1] < b["timestamps"][0] and b["start"] > a["start"]
    assert all(m["clips_per_video"] == 3 and len(m["timestamps"]) == 4 for m in metas)


def write_raw_shard(path, samples):
    """A video2dataset-style shard: ``{key}.mp4`` + ``{key}.txt`` + ``{key}.json`` per sample."""
    with wds.TarWriter(str(path)) as writer:
        for sample in samples:
            writer.write(sample)
    return path


@pytest.fixture()
def raw_shards(tmp_path):
    from ls_video.datamodules.synthetic_videos import write_synthetic_video

    raw = tmp_path / "raw"
    raw.mkdir()
    videos = [open(write_synthetic_video(tmp_path / f"v{i}.mp4", 30, 48, 32, seed=i), "rb").read() for i in range(5)]

    def sample(key, video, caption):
        return {"__key__": key, "mp4": video, "txt": caption.encode(),
                "json": json.dumps({"key": key, "url": f"https://example.com/{key}.mp4", "status": "success"})}

    write_raw_shard(raw / "00000.tar", [sample("000000000", videos[0], "a first video"),
                                        sample("000000001", b"\x00corrupt" * 100, "a corrupt video"),
                                        {"__key__": "000000002", "txt": b"caption without a video"},
                                        sample("000000003", videos[1], "another video")])
    write_raw_shard(raw / "00001.tar", [sample("000010000", videos[2], "third"),
                                        sample("000010001", videos[3], "fourth")])
    write_raw_shard(tmp_path / "whole.tar", [sample("000020000", videos[4], "fifth"),
                                             sample("000020001", videos[0], "cut off")])
    with tarfile.open(tmp_path / "whole.tar") as tar:
        cut = tar.getmember("000020001.mp4").offset_data + len(videos[0]) // 2
    (raw / "00002.tar").write_bytes((tmp_path / "whole.tar").read_bytes()[:cut])  # truncated in its last video
    return raw


def test_raw_tar_shards_in(raw_shards, tiny_base, tmp_path):
    out = tmp_path / "shards"
    pattern = f"{raw_shards}/{{00000..00002}}.tar"
    report = preprocess(pattern, tiny_base, str(out), num_frames=4, fps=8, size=32, num_workers=2,
                        accelerator="cpu", batch_size=2)
    samples = read_shards(out)
    keys = sorted(s["__key__"] for s in samples)
    assert keys == ["000000_000000000", "000000_000000003", "000001_000010000", "000001_000010001",
                    "000002_000020000"]
    assert sorted(p.name for p in out.glob("shard-*.tar")) == [f"shard-00000{i}.tar" for i in range(3)]
    first = next(s for s in samples if s["__key__"] == "000000_000000000")
    meta = json.loads(first["json"])
    assert first["txt"] == b"a first video" and meta["source"] == f"{raw_shards}/00000.tar:000000000"
    assert meta["source_meta"]["url"] == "https://example.com/000000000.mp4"
    skipped = {(s["source"], s["reason"]) for s in report["skipped_files"]}
    assert (f"{raw_shards}/00000.tar:000000001", "unreadable") in skipped
    assert (f"{raw_shards}/00000.tar:000000002", "no_video") in skipped
    assert (f"{raw_shards}/00002.tar:000020001", "no_video") in skipped  # the member the truncation cut off
    assert (f"{raw_shards}/00002.tar", "bad_shard") in skipped
    assert report["written"] == 5 and report["skipped"] == len(report["skipped_files"]) == 4
    # streams work too: a pipe: source, read by webdataset without touching the tar on disk ourselves
    piped = preprocess(f"pipe:cat {raw_shards}/00001.tar", tiny_base, str(tmp_path / "piped"), num_frames=4,
                       fps=8, size=32, num_workers=0, accelerator="cpu")
    assert piped["written"] == 2 and piped["skipped"] == 0


@pytest.mark.slow
def test_two_processes_write_disjoint_shards(videos, tiny_base, tmp_path):
    """``--devices 2`` on CPU: two ranks, disjoint shards, together exactly the samples of one process."""
    def run(out, devices):
        r = subprocess.run([sys.executable, "-m", "ls_video.datamodules.preprocess", "--videos", str(videos), "--vae",
                            tiny_base, "--out", str(out), "--num-frames", "8", "--frame-stride", "1", "--size", "32",
                            "--shard-size", "2", "--num-workers", "1", "--accelerator", "cpu", "--devices", devices],
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        return r

    run(tmp_path / "one", "1")
    two = run(tmp_path / "two", "2")
    assert two.stdout.count("wrote ") == 1  # rank 0 reports for the job
    ranks = {}
    for stats in (tmp_path / "two").glob("*.stats.json"):
        st = json.loads(stats.read_text())
        ranks.setdefault(st["rank"], set()).add(st["shard"])
    assert set(ranks) == {0, 1} and not ranks[0] & ranks[1]
    assert ranks[0] == {"shard-000000.tar", "shard-000002.tar", "shard-000004.tar"}
    one = {s["__key__"]: s for s in read_shards(tmp_path / "one")}
    both = {s["__key__"]: s for s in read_shards(tmp_path / "two")}
    assert sorted(both) == sorted(one) and len(one) == 7
    for key, s in one.items():
        assert both[key]["txt"] == s["txt"]
        a = np.load(io.BytesIO(s["latents.npy"]), allow_pickle=False)
        b = np.load(io.BytesIO(both[key]["latents.npy"]), allow_pickle=False)
        assert np.allclose(a, b, atol=1e-2)
    one_report = json.loads((tmp_path / "one" / "report.json").read_text())
    two_report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert sorted(f["source"] for f in two_report["skipped_files"]) == \
        sorted(f["source"] for f in one_report["skipped_files"])


def test_cli_clip_options():
    from ls_video.datamodules.preprocess import parse_args

    args = parse_args(["--videos", "raw/{00000..00009}.tar", "--vae", "v", "--out", "o", "--clip-start", "random",
                       "--clips-per-video", "0", "--seed", "7"])
    assert (args.clip_start, args.clips_per_video, args.seed) == ("random", 0, 7)
    with pytest.raises(SystemExit):
        parse_args(["--videos", "v", "--vae", "v", "--out", "o", "--clip-start", "end"])
