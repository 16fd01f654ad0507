"""Bucket-homogeneous batches from latent shards of mixed shapes (made with ``preprocess --buckets``).

Samples stream as usual (shards split by rank and worker, shuffle buffer); each goes to the pending
group of its latent shape ``(F, C, h, w)``, and a group is yielded as one batch once it holds its bucket's
batch size. Batch sizes are scaled so every batch holds about the same latent pixels x frames (the
*budget*; by default the configured ``batch_size`` of the largest bucket), so a bucket's share of batches
follows its share of samples, and of compute its share of data. A bucket with fewer samples than its
batch size is batched smaller, with a warning naming it. The bucket table (clips and latent shape per
bucket) is the ``buckets`` entry of the ``index.json`` that ``preprocess`` writes next to the shards.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from ls_video.datamodules.storage import RemoteOptions, open_shard
from ls_video.datamodules.stream import LatentClipStream, collate
from ls_video.preemption import DATA_STOP

log = logging.getLogger(__name__)


@dataclass
class BucketOptions:
    """Bucketed batches (``LatentVideoDataModule(buckets=...)``).

    Args:
        index: the shards' ``index.json`` (path or http(s) URL); ``None``: the one next to the first
            training shard.
        budget: latent pixels x frames per batch (``F * h * w * B``); ``None``: ``batch_size`` clips of the
            largest bucket.
        batch_sizes: batch size of a bucket by name (``"320x192x16"``), instead of the budget's.
    """

    index: str | None = None
    budget: int | None = None
    batch_sizes: dict[str, int] = field(default_factory=dict)


def volume(shape: tuple[int, ...] | list[int]) -> int:
    """Latent pixels x frames of one clip ``(F, C, h, w)``."""
    return int(shape[0]) * int(shape[2]) * int(shape[3])


def read_index(path: str, remote: RemoteOptions | None = None) -> dict:
    """The ``buckets`` table of an ``index.json``: ``{name: {"samples", "latent_shape"}}``."""
    if "://" in path:
        stream = open_shard(path, remote)
        try:
            index = json.loads(stream.read())
        finally:
            stream.close()
    else:
        with open(path) as f:
            index = json.load(f)
    if not index.get("buckets"):
        raise ValueError(f"{path} has no bucket table: preprocess the videos with --buckets / --frame-buckets")
    return index["buckets"]


def default_index(first_url: str) -> str:
    """``index.json`` next to a local (or http(s)) shard; a ``pipe:`` source needs ``buckets.index``."""
    if first_url.startswith("pipe:"):
        raise ValueError("shards read through pipe: need buckets.index (the path or URL of their index.json)")
    return first_url.rsplit("/", 1)[0] + "/index.json" if "/" in first_url else "index.json"


class BucketTable:
    """Batch size and name of every bucket, from the index's table, ``batch_size`` and the options."""

    def __init__(self, buckets: dict, batch_size: int, options: BucketOptions) -> None:
        self.buckets = {name: {"samples": int(e["samples"]), "shape": tuple(e["latent_shape"])}
                        for name, e in buckets.items()}
        unknown = set(options.batch_sizes) - set(self.buckets)
        if unknown:
            raise ValueError(f"buckets.batch_sizes names buckets the index does not list: {sorted(unknown)}; "
                             f"it lists {sorted(self.buckets)}")
        largest = max((volume(e["shape"]) for e in self.buckets.values()), default=1)
        self.budget = options.budget or batch_size * largest
        self.names = {e["shape"]: name for name, e in self.buckets.items()}
        self.sizes: dict[str, int] = {}
        self.tiny: list[str] = []
        for name, e in self.buckets.items():
            size = options.batch_sizes.get(name) or max(1, self.budget // volume(e["shape"]))
            if 0 < e["samples"] < size:
                size = e["samples"]
                self.tiny.append(name)
            self.sizes[name] = size

    def name(self, shape: tuple[int, ...]) -> str:
        """The bucket's name; a shape the index does not list is named by its latent shape."""
        return self.names.get(tuple(shape)) or "latent_" + "x".join(map(str, shape))

    def batch_size(self, shape: tuple[int, ...]) -> int:
        name = self.name(shape)
        return self.sizes[name] if name in self.sizes else max(1, self.budget // volume(shape))

    def describe(self) -> str:
        """One line per bucket: clips, share, batch size (for the log at the start of training)."""
        total = sum(e["samples"] for e in self.buckets.values()) or 1
        return "\n".join(f"  {name:>14}: {e['samples']} clips ({100 * e['samples'] / total:.1f}%), latents "
                         f"{e['shape']}, batch {self.sizes[name]}" for name, e in self.buckets.items())

    def warn_tiny(self, warn=log.warning) -> None:
        if self.tiny:
            warn("buckets with fewer clips than one batch are batched smaller (kept, not dropped): "
                 + ", ".join(f"{n} ({self.buckets[n]['samples']} clips, batch {self.sizes[n]})" for n in self.tiny))


class BucketBatches(torch.utils.data.IterableDataset):
    """Yields collated batches of one bucket each (``batch["bucket"]`` names it) from a stream of mixed shapes.

    Args:
        stream: the samples (``LatentClipStream(..., mixed_shapes=True)``; its ``epoch_length`` unused).
        table: batch sizes and names.
        num_batches: batches per epoch on this rank, split over DataLoader workers (equal on every rank, so DDP
            ranks stay in step); ``None``: until the stream ends, then the unfilled groups as smaller batches.
    """

    def __init__(self, stream: LatentClipStream, table: BucketTable, num_batches: int | None = None) -> None:
        super().__init__()
        self.stream, self.table, self.num_batches = stream, table, num_batches

    def batch(self, shape: tuple[int, ...], samples: list[dict]) -> dict:
        return {**collate(samples), "bucket": self.table.name(shape)}

    def __iter__(self) -> Iterator[dict]:
        _, workers = self.stream._worker()
        limit = None if self.num_batches is None else max(1, math.ceil(self.num_batches / workers))
        pending: dict[tuple[int, ...], list[dict]] = {}
        produced = 0
        for sample in self.stream:
            if DATA_STOP in sample:  # the stream stalled: passed on as a whole batch
                yield sample
                return
            shape = tuple(sample["latents"].shape)
            group = pending.setdefault(shape, [])
            group.append(sample)
            if len(group) >= self.table.batch_size(shape):
                yield self.batch(shape, pending.pop(shape))
                produced += 1
                if limit is not None and produced >= limit:
                    return
        for shape, group in pending.items():  # a finite stream ended: what is left, as smaller batches
            yield self.batch(shape, group)


def unbatched(batch: dict) -> dict:
    """``collate_fn`` of a DataLoader over :class:`BucketBatches` (the batches come whole)."""
    return batch


def index_path(options: BucketOptions, urls: list[str]) -> str:
    return options.index or default_index(urls[0])

