"""Preprocessing throughput and memory on real-sized videos, every step a separate process measured whole.

    python benchmarks/preprocess.py [--videos 32] [--repeat 4] [--long-seconds 40] [--work DIR] [--repo ROOT]

Makes (once, cached in ``--work``) a WebVid-like set: ``--videos`` H.264 files of 596x336 (WebVid's
size), 18 s at 25 fps, a keyframe every 2 s, B-frames; plus one ``--long-seconds`` 1920x1080 25 fps file.
Then, with the job's default DataLoader workers:

1. decode + resize (VAE excluded): the job's clip stream over the set listed ``--repeat`` times,
   16-frame 256x256 clips at 8 fps -> clips/s;
2. the whole job (``python -m ls_video.datamodules.preprocess``, start-up included) with the toy VAE
   (``assets/toy-base``) on the set, same clips;
3. the whole job on the long 1080p file: one 16-frame clip at 8 fps, 64x64 (the case of issue 13).

Peak memory is the largest sum of resident memory over the job's process tree (the main process and its
DataLoader workers, sampled every 20 ms from /proc; shared pages count once per process, so it is an
upper bound) and the largest single process (what GNU ``time -v`` reports). ``--repo`` runs steps 2-3
with another checkout's code (for before/after figures). Last line:
``preprocess_clips_per_s=<step 1 clips/s> peak_rss_gb=<step 1 peak, whole tree>``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def _rss_kb(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KB
    except (OSError, IndexError, ValueError):
        return 0


def run_measured(cmd: list[str], env: dict | None = None, cwd: str | None = None) -> dict:
    """Run ``cmd``; wall seconds, peak RSS (GB) of its process tree and of its largest process, stdout."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    peak = {"tree": 0, "single": 0}

    def sample() -> None:
        while proc.poll() is None:
            pids, i = [proc.pid], 0
            while i < len(pids):
                pids += _children(pids[i])
                i += 1
            sizes = [_rss_kb(p) for p in pids]
            peak["tree"] = max(peak["tree"], sum(sizes))
            peak["single"] = max(peak["single"], max(sizes))
            time.sleep(0.02)

    start = time.perf_counter()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return {"wall_s": wall, "peak_tree_gb": peak["tree"] / 2**20, "peak_single_gb": peak["single"] / 2**20,
            "stdout": out}


def make_data(work: Path, videos: int, long_seconds: int) -> tuple[Path, Path]:
    """The WebVid-like folder (videos + captions) and the long 1080p file, made once."""
    from concurrent.futures import ProcessPoolExecutor

    folder, long_dir = work / f"webvid-{videos}", work / f"long-{long_seconds}s"
    jobs = []
    folder.mkdir(parents=True, exist_ok=True)
    long_dir.mkdir(parents=True, exist_ok=True)
    for i in range(videos):
        path = folder / f"{i:05d}.mp4"
        (folder / f"{i:05d}.txt").write_text(f"synthetic clip {i}")
        if not path.exists():
            jobs.append(dict(path=path, num_frames=18 * 25, width=596, height=336, fps=25, keyint=50, seed=i))
    long_path = long_dir / "long.mp4"
    if not long_path.exists():
        jobs.append(dict(path=long_path, num_frames=long_seconds * 25, width=1920, height=1080, fps=25, keyint=50))
    if jobs:
        print(f"writing {len(jobs)} videos into {work} (once) ...", flush=True)
        start = time.perf_counter()
        with ProcessPoolExecutor(2) as pool:  # write to .part, rename when done: an interrupted run redoes it
            list(pool.map(_write, jobs))
        print(f"  {time.perf_counter() - start:.0f} s", flush=True)
    (long_dir / "long.txt").write_text("a long 1080p video")
    return folder, long_dir


def _write(job: dict) -> None:
    from ls_video.datamodules.synthetic_videos import write_synthetic_video

    final = job.pop("path")
    part = final.with_suffix(".part.mp4")
    write_synthetic_video(part, **job)
    part.rename(final)


def decode_only(folder: str, repeat: int, num_frames: int, fps: float, size: int) -> None:
    """Step 1, in its own process: the job's clip stream and DataLoader settings, no VAE."""
    import inspect

    import torch

    from ls_video.datamodules.clip_stream import ClipStream, collate, file_units
    from ls_video.datamodules.clips import ClipSpec
    from ls_video.datamodules.preprocess import preprocess
    from ls_video.datamodules.sources import list_sources

    defaults = {k: v.default for k, v in inspect.signature(preprocess).parameters.items()}
    sources = list_sources(folder) * repeat
    units = file_units(sources, defaults["shard_size"], defaults["batch_size"])
    loader = torch.utils.data.DataLoader(ClipStream(units, ClipSpec(num_frames, size, fps)),
                                         batch_size=defaults["batch_size"], num_workers=defaults["num_workers"],
                                         collate_fn=collate)
    start, clips, bad = time.perf_counter(), 0, 0
    for batch in loader:
        clips += len(batch["good"])
        bad += len(batch["bad"])
        if batch["frames"] is not None:
            assert batch["frames"].shape[1:] == (num_frames, size, size, 3)
    elapsed = time.perf_counter() - start
    print(json.dumps({"clips": clips, "bad": bad, "seconds": elapsed, "workers": defaults["num_workers"]}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--videos", type=int, default=32, help="files in the WebVid-like set")
    p.add_argument("--repeat", type=int, default=4, help="passes over the set in the decode + resize step")
    p.add_argument("--long-seconds", type=int, default=40, help="length of the 1080p file")
    p.add_argument("--work", default="/tmp/ls-video-bench-preprocess", help="where the videos are cached")
    p.add_argument("--repo", default=str(ROOT), help="checkout whose job runs steps 2-3")
    p.add_argument("--steps", default="1,2,3", help="which steps to run")
    p.add_argument("--decode-only", default=None, help=argparse.SUPPRESS)  # step 1's own process
    args = p.parse_args()
    if args.decode_only:
        decode_only(args.decode_only, args.repeat, 16, 8, 256)
        return
    work, steps = Path(args.work), {int(s) for s in args.steps.split(",")}
    folder, long_dir = make_data(work, args.videos, args.long_seconds)
    env = {**os.environ, "PYTHONPATH": args.repo, "TOKENIZERS_PARALLELISM": "false"}
    job = [sys.executable, "-m", "ls_video.datamodules.preprocess", "--vae", str(ROOT / "assets" / "toy-base"),
           "--accelerator", "cpu"]
    print(f"machine: {os.cpu_count()} CPUs; job code: {args.repo}", flush=True)
    result = None
    if 1 in steps:
        r = run_measured([sys.executable, __file__, "--decode-only", str(folder), "--repeat", str(args.repeat)], env)
        stats = json.loads(r["stdout"].strip().splitlines()[-1])
        rate = stats["clips"] / stats["seconds"]
        result = (rate, r["peak_tree_gb"])
        print(f"1. decode+resize, {stats['clips']} clips of 16x256x256 from {args.videos} files x {args.repeat}, "
              f"{stats['workers']} workers: {rate:.1f} clips/s ({stats['seconds']:.1f} s in the loop, "
              f"{r['wall_s']:.1f} s with start-up), peak RSS {r['peak_tree_gb']:.2f} GB tree / "
              f"{r['peak_single_gb']:.2f} GB largest process", flush=True)
    def whole_job(name: str, videos: Path, size: int) -> tuple[dict, int]:
        """Run the preprocessing job into a fresh ``work/name``; (measurements, clips written)."""
        out = work / name
        subprocess.run(["rm", "-rf", str(out)], check=True)
        r = run_measured(job + ["--videos", str(videos), "--out", str(out), "--num-frames", "16", "--fps", "8",
                                "--size", str(size)], env, cwd=args.repo)
        return r, json.loads((out / "report.json").read_text())["written"]

    if 2 in steps:
        r, written = whole_job("out-webvid", folder, 256)
        print(f"2. whole job with the toy VAE, {written} clips of 16x256x256: {r['wall_s']:.1f} s, "
              f"{written / r['wall_s']:.2f} clips/s, peak RSS {r['peak_tree_gb']:.2f} GB tree / "
              f"{r['peak_single_gb']:.2f} GB largest process", flush=True)
    if 3 in steps:
        r, written = whole_job("out-long", long_dir, 64)
        print(f"3. whole job on one {args.long_seconds}-s 1080p file, {written} clip of 16x64x64: "
              f"{r['wall_s']:.1f} s, peak RSS {r['peak_tree_gb']:.2f} GB tree / "
              f"{r['peak_single_gb']:.2f} GB largest process", flush=True)
    if result is not None:
        print(f"preprocess_clips_per_s={result[0]:.1f} peak_rss_gb={result[1]:.2f}")


if __name__ == "__main__":
    main()
