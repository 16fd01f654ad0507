"""The clips of one preprocessing rank as a stream for a ``DataLoader``.

The work is cut into units, each a piece of one output shard: a run of video files, or one raw-video tar
shard (read with webdataset's tar iterator, members streamed, nothing unpacked to disk). Units are split
over DataLoader workers; every video is decoded into its clips, a bad video (or tar member, or tar)
becomes a ``{"error": reason}`` record, and a ``{"done": shard}`` marker follows each unit so the writer
knows when a shard is complete.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ls_video.datamodules.clips import ClipError, ClipSpec, load_clips
from ls_video.datamodules.sources import VIDEO_EXTENSIONS, Source
from ls_video.datamodules.storage import tar_samples


@dataclass(frozen=True)
class Unit:
    """A piece of output shard ``shard``: file sources (with their index in the sorted list) or one tar."""

    shard: int
    sources: tuple[tuple[int, Source], ...] = ()
    url: str | None = None


def file_units(sources: list[Source], shard_size: int, piece: int) -> list[Unit]:
    """Source ``i`` goes to shard ``i // shard_size``; each shard is cut into pieces of ``piece`` videos."""
    units = []
    for first in range(0, len(sources), shard_size):
        shard = first // shard_size
        chunk = list(enumerate(sources[first : first + shard_size], start=first))
        units += [Unit(shard, tuple(chunk[i : i + piece])) for i in range(0, len(chunk), piece)]
    return units


def tar_units(urls: list[str]) -> list[Unit]:
    """Input tar shard ``j`` becomes output shard ``j`` (one unit each)."""
    return [Unit(j, url=url) for j, url in enumerate(urls)]


def parts_per_shard(units: list[Unit]) -> dict[int, int]:
    return dict(Counter(u.shard for u in units))


def _bad(shard: int, source: str, reason: str, detail: str) -> dict:
    return {"shard": shard, "source": source, "error": reason, "detail": detail}


class ClipStream(torch.utils.data.IterableDataset):
    """Yields ``{"shard", "key", "frames": (F, H, W, 3) uint8, "caption", "meta"}`` clips, error records and
    ``{"done": shard}`` markers for this worker's share of ``units``. ``threads``: decoder threads per video
    (default: 1 inside DataLoader workers, FFmpeg's choice in the main process)."""

    def __init__(self, units: list[Unit], spec: ClipSpec, threads: int | None = None) -> None:
        super().__init__()
        self.units, self.spec, self.threads = units, spec, threads

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # workers already use every core: one decoder thread each; alone, FFmpeg picks
        threads = self.threads if self.threads is not None else 1 if info is not None else 0
        for unit in self.units[worker::workers]:
            if unit.url is None:
                for index, src in unit.sources:
                    yield from self._video(unit.shard, f"{index:09d}", src.path, src.path, src.caption, threads)
            else:
                yield from self._tar(unit, threads)
            yield {"done": unit.shard}

    def _video(self, shard: int, key: str, name: str, file: str | bytes, caption: str, threads: int,
               extra: dict | None = None, seed_key: str | None = None) -> Iterator[dict]:
        try:
            clips, errors = load_clips(file, self.spec, name, threads, seed_key)
        except ClipError as err:
            yield _bad(shard, name, err.reason, str(err))
            return
        for frames, meta in clips:
            yield {"shard": shard, "key": key if self.spec.clips_per_video == 1 else f"{key}_{meta['clip']:03d}",
                   "frames": torch.from_numpy(frames), "caption": caption, "meta": {**meta, **(extra or {})}}
        for err in errors:
            yield _bad(shard, name, err.reason, str(err))

    def _tar(self, unit: Unit, threads: int) -> Iterator[dict]:
        """Samples of one video2dataset shard; a bad member is named ``shard.tar:key``."""
        tar_errors: list[Exception] = []

        def handler(exn: Exception) -> bool:
            tar_errors.append(exn)
            return True  # webdataset goes on with what it can still read

        for sample in tar_samples(unit.url, handler):  # timeouts and retries for remote shards
            key = sample["__key__"]
            name = f"{unit.url}:{key}"
            video = next((ext for ext in sample if "." + ext in VIDEO_EXTENSIONS), None)
            if video is None:
                yield _bad(unit.shard, name, "no_video", f"members: {sorted(k for k in sample if k[:2] != '__')}")
                continue
            try:
                info = json.loads(sample["json"]) if "json" in sample else {}
            except (json.JSONDecodeError, UnicodeDecodeError):
                info = {}
            info = info if isinstance(info, dict) else {}
            caption = sample["txt"].decode("utf-8", errors="replace").strip() if "txt" in sample \
                else str(info.get("caption") or "")
            out_key = f"{unit.shard:06d}_{key.replace('/', '_')}"
            yield from self._video(unit.shard, out_key, name, sample[video], caption, threads, {"source_meta": info},
                                   seed_key=key)
        if tar_errors:  # one record per tar: after a read error webdataset drops the rest of it
            first = tar_errors[0]
            more = f" (+{len(tar_errors) - 1} follow-up errors)" if len(tar_errors) > 1 else ""
            yield _bad(unit.shard, unit.url, "bad_shard", f"{type(first).__name__}: {first}{more}")


def collate(items: list[dict]) -> dict:
    """-> ``{"frames": (B, F, H, W, 3) uint8 or None, "good": [...], "bad": [...], "done": [shards]}``;
    clips of different shapes (bucketed preprocessing) come as a list of ``(F, H, W, 3)`` tensors."""
    good = [it for it in items if "frames" in it]
    shapes = {it["frames"].shape for it in good}
    frames = [it["frames"] for it in good]
    frames = None if not good else frames if len(shapes) > 1 else torch.stack(frames)
    return {"frames": frames,
            "good": [{k: it[k] for k in ("shard", "key", "caption", "meta")} for it in good],
            "bad": [it for it in items if "error" in it],
            "done": [it["done"] for it in items if "done" in it]}
