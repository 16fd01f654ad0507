"""Evaluate a ``sample.py`` output folder (``manifest.json`` + videos).

    python -m ls_video.eval DIR [--metrics motion]

Prints a table and writes ``DIR/metrics.json`` with flat keys (``direction_acc``, ``step_acc``,
``color_acc``, ``shape_acc``, ``consistency``) plus the protocol (samples, frames, resolution, seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ls_video.video_io import read_video

METRICS = ("motion",)


def load_samples(folder: str) -> tuple[list, list[dict]]:
    """Decoded videos and manifest rows of a ``sample.py`` folder."""
    manifest_path = os.path.join(folder, "manifest.json")
    if not os.path.isfile(manifest_path):
        raise FileNotFoundError(f"{manifest_path} not found (is {folder} a sample.py output folder?)")
    with open(manifest_path) as f:
        rows = json.load(f)["samples"]
    videos = [read_video(os.path.join(folder, row["file"]))[0] for row in rows]
    return videos, rows


def evaluate(folder: str, metrics: tuple[str, ...] = METRICS) -> dict:
    from ls_video.metrics.toy import score

    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; available: {list(METRICS)}")
    videos, rows = load_samples(folder)
    result: dict = {"protocol": {"num_samples": len(rows), "num_frames": int(videos[0].shape[0]),
                                 "resolution": list(videos[0].shape[1:3]),
                                 "seeds": sorted({r["seed"] for r in rows}),
                                 "sampler": {k: rows[0].get(k) for k in ("scheduler", "steps", "guidance_scale")}}}
    if "motion" in metrics:
        toy = score(videos, [r["prompt"] for r in rows])
        result.update({k: v for k, v in toy.items() if k != "rows" and v is not None})
        result["per_video"] = [dict(r, file=row["file"], seed=row["seed"]) for r, row in zip(toy["rows"], rows,
                                                                                              strict=True)]
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ls_video.eval", description=__doc__.split("\n")[0])
    p.add_argument("dir", help="folder written by sample.py")
    p.add_argument("--metrics", default="motion", help=f"comma-separated, from {list(METRICS)}")
    args = p.parse_args(argv)
    try:
        result = evaluate(args.dir, tuple(m.strip() for m in args.metrics.split(",") if m.strip()))
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"eval: error: {err}", file=sys.stderr)
        return 2
    for key, value in result.items():
        if isinstance(value, float):
            print(f"{key:>14}  {value:.3f}")
    print(f"{'n':>14}  {result['protocol']['num_samples']}  (metrics.json written)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
