"""Evaluate a ``sample.py`` output folder (``manifest.json`` + videos).

    python -m ls_video.commands.eval DIR [--metrics motion,clipsim,fvd,fid] [--clip-model PATH]
        [--fvd-model PATH] [--fid-model PATH] [--reference DIR|toy] [--device cpu] [--html [--run RUN]]
        [--images DIR2]

Prints a table and writes ``DIR/metrics.json`` with flat keys (``direction_acc``, ``step_acc``,
``color_acc``, ``shape_acc``, ``consistency``, ``image_color_acc``, ``image_shape_acc``, ``clipsim``,
``clip_frame_consistency``, ``fvd``, ``fid``) plus the protocol: samples, frames, resolution, seeds,
sampler, and per metric its extractor, the SHA-256 of the extractor's weights, the value range fed to it
and the reference set.

* ``motion``: toy-world direction / colour / shape / temporal consistency from pixels (toy prompts).
  One-frame samples (``sample.py --num-frames 1``) are images: they are scored for colour and shape
  only, as ``image_color_acc`` / ``image_shape_acc`` (``image_n`` of them), apart from the videos;
  ``--images DIR2`` adds the one-frame samples of another ``sample.py`` folder (``make demo`` does).
* ``clipsim``: CLIP image-text cosine, ``--clip-model`` (any transformers ``CLIPModel`` folder or id).
* ``fvd``: Fréchet distance of clip features, ``--fvd-model`` (StyleGAN-V's ``i3d_torchscript.pt``: the
  published FVD; VideoMAE, CLIP, or our toy net from ``python -m ls_video.metrics.toy_net``), against ``--reference``.
* ``fid``: Fréchet distance of per-frame features, ``--fid-model`` (``inception-2015-12-05.pt``: the published FID
  through clean-fid; a CLIP folder: CLIP-FID; default: the CLIP model).

``--reference`` is a folder of real videos (mp4/gif/webm, or a ``sample.py`` folder) or ``toy``:
clips of the toy world's validation split rendered at the samples' resolution and frame count.

``--html`` also writes ``DIR/index.html`` (``ls_video.commands.gallery``): every sample as an animated GIF with its
prompt, seed and scores, the metrics, and with ``--run`` the training run's loss curves.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import numpy as np

from ls_video.errors import UsageError, command
from ls_video.video_io import read_video

METRICS = ("motion", "clipsim", "fvd", "fid")
VIDEO_EXTENSIONS = (".mp4", ".gif", ".webm", ".mov", ".avi", ".mkv")


def load_samples(folder: str) -> tuple[list, list[dict]]:
    """Decoded videos and manifest rows of a ``sample.py`` folder."""
    manifest_path = os.path.join(folder, "manifest.json")
    if not os.path.isfile(manifest_path):
        raise FileNotFoundError(f"{manifest_path} not found (is {folder} a sample.py output folder?)")
    with open(manifest_path) as f:
        rows = json.load(f)["samples"]
    videos = [read_video(os.path.join(folder, row["file"]))[0] for row in rows]
    return videos, rows


def load_reference(reference: str, like: list[np.ndarray], n: int) -> tuple[list[np.ndarray], str]:
    """Real videos to compare with, and a description of the set for the protocol."""
    frames, size = like[0].shape[0], like[0].shape[1]
    if reference == "toy":
        from ls_video.toy.world import ToyWorld

        world = ToyWorld(size=size, num_frames=frames, object_size=max(2, size // 4))
        clips = world.clips(max(n, 2), "val", seed=1)
        return [world.render(c) for c in clips], f"toy world val split, {len(clips)} clips, seed 1"
    if not os.path.isdir(reference):
        raise FileNotFoundError(f"reference {reference!r} is neither a folder nor 'toy'")
    if os.path.isfile(os.path.join(reference, "manifest.json")):
        videos, _ = load_samples(reference)
    else:
        paths = sorted(p for p in glob.glob(os.path.join(reference, "**", "*"), recursive=True)
                       if p.lower().endswith(VIDEO_EXTENSIONS))
        videos = [read_video(p)[0] for p in paths]
    videos = [v[:frames] for v in videos if len(v) >= frames]
    if len(videos) < 2:
        raise UsageError(f"reference {reference} holds fewer than 2 videos with >= {frames} frames")
    return videos, f"{reference}, {len(videos)} videos, first {frames} frames"


def check_request(metrics: tuple[str, ...], clip_model: str | None, fvd_model: str | None, fid_model: str | None,
                  reference: str | None) -> None:
    """One-line errors for unknown metrics and missing extractors or reference sets."""
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise UsageError(f"unknown metrics {sorted(unknown)}; available: {list(METRICS)}")
    needs = {"clipsim": ("--clip-model", clip_model), "fvd": ("--fvd-model", fvd_model),
             "fid": ("--fid-model or --clip-model", fid_model)}
    for m in metrics:
        if m in needs and not needs[m][1]:
            raise UsageError(f"metric {m!r} needs {needs[m][0]}")
    if ("fvd" in metrics or "fid" in metrics) and not reference:
        raise UsageError("fvd/fid need --reference (a folder of real videos, or 'toy')")


def protocol_of(rows: list[dict], videos: list, still_rows: list[dict], images_folder: str) -> dict:
    """What was scored: sample count, frames, resolution, seeds and sampler (and the images', if any)."""
    protocol = {"num_samples": len(rows), "num_frames": int(videos[0].shape[0]),
                "resolution": list(videos[0].shape[1:3]), "seeds": sorted({r["seed"] for r in rows}),
                "sampler": {k: rows[0].get(k) for k in ("scheduler", "steps", "guidance_scale")}}
    if still_rows:
        protocol["images"] = {"num_samples": len(still_rows), "seeds": sorted({r["seed"] for r in still_rows}),
                              "folder": images_folder,
                              "sampler": {k: still_rows[0].get(k) for k in ("scheduler", "steps", "guidance_scale")}}
    return protocol


def motion_scores(videos: list, rows: list[dict], stills: list, still_rows: list[dict], all_rows: list[dict],
                  extra_rows: list[dict] | None) -> dict:
    """Toy accuracies: direction / steps / colour / shape of videos, ``image_*`` colour / shape of one-frame
    samples, and the per-sample rows (``per_video``, and ``per_image`` for a second folder)."""
    from ls_video.metrics.toy import score

    def scored(samples: list, sample_rows: list[dict]) -> tuple[dict, dict]:
        toy = score(samples, [r["prompt"] for r in sample_rows])
        per = {id(r): dict(t, file=r["file"], seed=r["seed"], num_frames=int(s.shape[0]))
               for t, r, s in zip(toy["rows"], sample_rows, samples, strict=True)}
        return toy, per

    result: dict = {}
    per: dict = {}
    if videos[0].shape[0] > 1:
        toy, per = scored(videos, rows)
        result.update({k: v for k, v in toy.items() if k != "rows" and v is not None})
    if stills:
        toy, per_image = scored(stills, still_rows)
        result.update({"image_color_acc": toy["color_acc"], "image_shape_acc": toy["shape_acc"], "image_n": toy["n"]})
        per.update(per_image)
    result["per_video"] = [per[id(r)] for r in all_rows]  # keyed by row object: two folders may share file names
    if extra_rows is not None:
        result["per_image"] = [per[id(r)] for r in extra_rows]
    return result


def frechet_scores(metrics: tuple[str, ...], videos: list, reference: str, fvd_model: str | None,
                   fid_model: str | None, device: str, protocol: dict) -> dict:
    """FVD / FID of the samples against the reference set (their protocols go into ``protocol``)."""
    from ls_video.metrics.features import Extractor
    from ls_video.metrics.frechet import frechet_distance_of

    result = {}
    real, described = load_reference(reference, videos, len(videos))
    for name, path in (("fvd", fvd_model), ("fid", fid_model)):
        if name not in metrics:
            continue
        ex = Extractor(path, device)
        feats = ex.video_features if name == "fvd" else ex.frame_features
        result[name] = frechet_distance_of(feats(videos), feats(real), biased=ex.biased)
        protocol[name] = dict(ex.protocol, reference=described, num_generated=len(videos), num_real=len(real))
    return result


def evaluate(folder: str, metrics: tuple[str, ...] = ("motion",), clip_model: str | None = None,
             fvd_model: str | None = None, fid_model: str | None = None, reference: str | None = None,
             device: str = "cpu", html: bool = False, run_dir: str | None = None,
             images: str | None = None) -> dict:
    """Score ``folder`` (and ``images``, a second folder of one-frame samples); writes ``metrics.json``."""
    fid_model = fid_model or clip_model
    check_request(metrics, clip_model, fvd_model, fid_model, reference)
    everything, all_rows = load_samples(folder)
    extra, extra_rows = load_samples(images) if images else ([], [])
    # One-frame samples are images: scored for colour and shape only (image_* keys); the rest are videos.
    videos = [v for v in everything if v.shape[0] > 1]
    rows = [r for v, r in zip(everything, all_rows, strict=True) if v.shape[0] > 1]
    stills = [v for v in everything + extra if v.shape[0] == 1]
    still_rows = [r for v, r in zip(everything + extra, all_rows + extra_rows, strict=True) if v.shape[0] == 1]
    if not videos and not stills:
        raise UsageError(f"no samples in {folder}")
    if not videos:  # an image-only folder: clipsim / fvd / fid and the protocol describe its images
        videos, rows = stills, still_rows
    protocol = protocol_of(rows, videos, still_rows if stills else [], images or folder)
    result: dict = {"protocol": protocol}
    if "motion" in metrics:
        result.update(motion_scores(videos, rows, stills, still_rows, all_rows, extra_rows if images else None))
    if "clipsim" in metrics:
        from ls_video.metrics.clipsim import clipsim

        out = clipsim(videos, [r["prompt"] for r in rows], clip_model, device)
        protocol["clipsim"] = out.pop("clipsim_protocol")
        result.update(out)
    if "fvd" in metrics or "fid" in metrics:
        result.update(frechet_scores(metrics, videos, reference, fvd_model, fid_model, device, protocol))
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2)
    if html:
        from ls_video.commands.gallery import write_gallery

        write_gallery(folder, everything + extra, result, run_dir)
    return result


@command("ls-video eval")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ls-video eval", description=__doc__.split("\n")[0])
    p.add_argument("dir", help="folder written by sample.py")
    p.add_argument("--metrics", default="motion", help=f"comma-separated, from {list(METRICS)}")
    p.add_argument("--clip-model", help="CLIPModel folder or hub id (clipsim; default extractor for fid)")
    p.add_argument("--fvd-model", help="video feature extractor: i3d_torchscript.pt (path or URL), a VideoMAE / CLIP "
                                       "folder or a toy-net folder")
    p.add_argument("--fid-model", help="frame feature extractor for fid: inception-2015-12-05.pt (path or URL) or a "
                                       "CLIP folder (default --clip-model)")
    p.add_argument("--reference", help="real videos for fvd/fid: a folder of videos, a sample.py folder, or 'toy'")
    p.add_argument("--device", default="cpu", help="device for the feature extractors")
    p.add_argument("--html", action="store_true", help="also write DIR/index.html (samples, metrics, curves)")
    p.add_argument("--run", help="training run folder (TensorBoard logs) whose loss curves --html plots")
    p.add_argument("--images", help="another sample.py folder whose one-frame samples are scored as images too "
                                    "(image_color_acc, image_shape_acc in DIR/metrics.json)")
    args = p.parse_args(argv)
    if args.run and not os.path.isdir(args.run):
        raise NotADirectoryError(f"--run {args.run} is not a folder")
    result = evaluate(args.dir, tuple(m.strip() for m in args.metrics.split(",") if m.strip()),
                      args.clip_model, args.fvd_model, args.fid_model, args.reference, args.device,
                      args.html, args.run, args.images)
    for key, value in result.items():
        if isinstance(value, float):
            print(f"{key:>22}  {value:.4f}")
    page = " and index.html" if args.html else ""
    counts = [] if result["protocol"]["num_frames"] == 1 else [f"{result['protocol']['num_samples']} videos"]
    counts += [f"{result['image_n']} images"] if "image_n" in result else []
    print(f"{'n':>22}  {', '.join(counts) or result['protocol']['num_samples']}  (metrics.json{page} written)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
