"""Aspect-ratio and clip-length buckets for preprocessing (``--buckets``, ``--frame-buckets``).

A clip goes to the bucket whose aspect ratio is nearest its video's (distance of log aspect ratios: a
2:1 video is as far from 1:1 as from 4:1), is resized to *cover* the bucket (the smaller scale that fills
both sides) and only the remainder is centre-cropped; its length is the longest frame bucket the video
can fill at the clip's frame rate. Buckets are named ``WxHxF`` (pixels, frames), e.g. ``320x192x16``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from ls_video.errors import UsageError


@dataclass(frozen=True)
class Bucket:
    """One aspect-ratio bucket: frame ``width`` x ``height`` in pixels."""

    width: int
    height: int

    @property
    def aspect(self) -> float:
        return self.width / self.height

    def name(self, num_frames: int) -> str:
        return f"{self.width}x{self.height}x{num_frames}"


def parse_buckets(text: str) -> tuple[Bucket, ...]:
    """``"256x256,320x192"`` (width x height) -> buckets; a one-line :class:`UsageError` when malformed."""
    buckets = []
    for item in (t.strip() for t in text.split(",")):
        parts = item.lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise UsageError(f"{item!r} is not WIDTHxHEIGHT (e.g. 320x192)")
        buckets.append(Bucket(int(parts[0]), int(parts[1])))
    if len(set(buckets)) != len(buckets):
        raise UsageError(f"a bucket is listed twice: {text}")
    return tuple(buckets)


def parse_frame_buckets(text: str) -> tuple[int, ...]:
    """``"16,24"`` -> ``(24, 16)`` (longest first); a one-line :class:`UsageError` when malformed."""
    try:
        frames = sorted({int(t) for t in text.split(",")}, reverse=True)
    except ValueError:
        raise UsageError(f"frame counts separated by commas expected, got {text!r}") from None
    if not frames or frames[-1] < 1:
        raise UsageError(f"frame counts must be >= 1, got {text!r}")
    return tuple(frames)


def check_multiples(buckets: tuple[Bucket, ...], factor: int) -> None:
    """Bucket sides must be multiples of the VAE's downsampling ``factor`` (one-line :class:`UsageError`)."""
    bad = [f"{b.width}x{b.height}" for b in buckets if b.width % factor or b.height % factor]
    if bad:
        raise UsageError(f"--buckets {', '.join(bad)}: width and height must be multiples of {factor} (the VAE's "
                         "downsampling); to sample them too, of the VAE's x U-Net's stride (Stable Diffusion: 64)")


def nearest_bucket(height: int, width: int, buckets: tuple[Bucket, ...]) -> Bucket:
    """The bucket nearest the frame's aspect ratio (log distance; a tie goes to the one listed first)."""
    aspect = math.log(width / height)
    return min(buckets, key=lambda b: abs(math.log(b.aspect) - aspect))


def crop_fraction(height: int, width: int, bucket: Bucket) -> float:
    """Share of the picture the centre crop removes when ``height x width`` covers ``bucket``."""
    scale = max(bucket.height / height, bucket.width / width)
    return round(1 - bucket.width * bucket.height / (height * scale * width * scale), 4)


def longest_fitting(frame_buckets: tuple[int, ...], last_frame: float | None, step: float,
                    tolerance: float) -> int | None:
    """The longest frame count whose clip (``(F - 1) * step`` seconds from 0) ends by ``last_frame`` (+
    ``tolerance``); the longest of all when the duration is unknown; ``None`` when none fits."""
    if last_frame is None:
        return frame_buckets[0]
    return next((f for f in frame_buckets if (f - 1) * step <= last_frame + tolerance), None)


def count_bucket(stats: dict, name: str, latent_shape: list[int]) -> None:
    """Count one written clip of bucket ``name`` in a shard's stats (``stats["buckets"][name]``)."""
    entry = stats.setdefault("buckets", {}).setdefault(name, {"samples": 0, "latent_shape": latent_shape})
    entry["samples"] += 1


def merge_bucket_counts(stats: list[dict]) -> dict:
    """The shards' bucket counts summed: ``{name: {"samples", "latent_shape"}}``, largest bucket first."""
    total: dict[str, dict] = {}
    for st in stats:
        for name, entry in st.get("buckets", {}).items():
            merged = total.setdefault(name, {"samples": 0, "latent_shape": entry["latent_shape"]})
            merged["samples"] += entry["samples"]
    return dict(sorted(total.items(), key=lambda kv: -kv[1]["samples"]))


def empty_buckets(buckets: dict, settings: dict) -> list[str]:
    """The job's listed aspect-ratio buckets (``WxH``) and frame buckets (``F frames``) no clip went to."""
    aspects = {name.rsplit("x", 1)[0] for name in buckets}
    lengths = {int(name.rsplit("x", 1)[1]) for name in buckets}
    empty = [b for b in settings.get("buckets") or [] if b not in aspects]
    return empty + [f"{f} frames" for f in settings.get("frame_buckets") or [] if f not in lengths]


def bucket_summary(report: dict) -> str:
    """Lines for the end of a bucketed job: clips per bucket, empty buckets, each skipped source and why."""
    lines = [f"  {name:>14}: {e['samples']} clip{'s' * (e['samples'] != 1)}, latents {tuple(e['latent_shape'])}"
             for name, e in report["buckets"].items()]
    if report.get("empty_buckets"):
        lines.append(f"  no clip in: {', '.join(report['empty_buckets'])}")
    for s in report["skipped_files"]:
        why = s["detail"] if s["detail"].startswith(s["reason"]) else f"{s['reason']}: {s['detail']}"
        lines.append(f"  skipped {s['source']}: {why}")
    return "\n".join(lines)


def bucket_report(stats: list[dict], settings: dict) -> dict:
    """``{"buckets": clips per bucket, "empty_buckets": [...]}`` for a bucketed job's report, else ``{}``."""
    if not settings.get("buckets") and not settings.get("frame_buckets"):
        return {}
    buckets = merge_bucket_counts(stats)
    return {"buckets": buckets, "empty_buckets": empty_buckets(buckets, settings)}


def bucket_settings(spec, vae_factor: int) -> dict:
    """Job settings of a bucketed :class:`~ls_video.datamodules.clips.ClipSpec` (``{}`` unbucketed: shards unchanged);
    checks the buckets against the VAE's downsampling ``vae_factor``."""
    if not spec.bucketed:
        return {}
    check_multiples(spec.buckets, vae_factor)
    return dict(buckets=[f"{b.width}x{b.height}" for b in spec.buckets] or None,
                frame_buckets=list(spec.frame_buckets) or None, size=None if spec.buckets else spec.size)


def _argument(parse):
    """``parse`` as an argparse ``type``: its :class:`UsageError` becomes argparse's one-line error."""

    def convert(text: str):
        try:
            return parse(text)
        except UsageError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return convert


def add_bucket_args(p: argparse.ArgumentParser) -> None:
    """``--buckets`` and ``--frame-buckets`` of ``ls-video preprocess``."""
    p.add_argument("--buckets", type=_argument(parse_buckets), default=(),
                   help="aspect-ratio buckets WIDTHxHEIGHT,... (e.g. 256x256,320x192,192x320): each video covers the "
                        "nearest and is centre-cropped to it, instead of the --size square")
    p.add_argument("--frame-buckets", type=_argument(parse_frame_buckets), default=(),
                   help="clip lengths F1,F2,... (e.g. 16,24): each video gives the longest it can fill at --fps, "
                        "instead of --num-frames")
