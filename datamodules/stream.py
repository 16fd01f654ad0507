"""A streaming ``IterableDataset`` over latent shards: shard split by rank and worker, safe
decoding, bad samples skipped and counted, shuffle buffer, random temporal crop."""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import random
import signal
import tarfile
import time
from collections import Counter
from collections.abc import Iterator

import numpy as np
import torch
import webdataset as wds
from webdataset.shardlists import expand_urls

from ls_video.datamodules.shards import BadSampleError, UnsafeShardError, decode_sample
from ls_video.datamodules.storage import RemoteOptions, ShardReadError, check_protocols, open_shard
from ls_video.errors import UsageError
from ls_video.preemption import DATA_STOP

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class _Stalled(Exception):
    """No data for ``stall_timeout`` seconds (raised inside the stream, turned into a ``DATA_STOP`` sample)."""


def expand(urls: str | list[str]) -> list[str]:
    """Brace patterns (``shards/{000000..000099}.tar``) and lists -> one list of URLs."""
    items = [urls] if isinstance(urls, str) else list(urls)
    return [u for item in items for u in expand_urls(item)]


class LatentClipStream(torch.utils.data.IterableDataset):
    """Yields ``{"latents": (F, C, h, w) float16 tensor, "caption": str, "key": str, ...}``.

    Args:
        urls: shard URLs or brace patterns (local paths, ``pipe:`` commands, any fsspec URL: ``s3://``,
            ``gs://``, ``hf://``, http(s); :mod:`ls_video.datamodules.storage`).
        rank, world_size: this process's place in a distributed job (shards are split over ranks,
            then over DataLoader workers; without ``resampled`` every shard is read once per epoch).
        resampled: draw shards at random forever (seeded per rank and worker); set ``epoch_length``.
        epoch_length: samples per rank per epoch (split over workers); ``None`` = until shards end.
        shuffle_buffer: samples held for shuffling (0 disables).
        num_frames: random temporal crop to this many frames (``None`` keeps the shard's length).
        seed: base seed for shard order, shuffling and crops.
        split_by: ``"shard"`` gives each rank / worker its own shards (training); ``"sample"`` lets
            every rank read all shards and keep every ``world_size``-th sample, so each rank gets data
            even with fewer shards than ranks (validation sets are small).
        remote: timeouts, retries and fsspec storage options of remote shards (:mod:`ls_video.datamodules.storage`);
            a shard that cannot be read is skipped and counted by reason.
        mixed_shapes: let samples differ in shape (bucketed shards, batched by
            :class:`~ls_video.datamodules.bucket_batches.BucketBatches`); by default a sample whose ``(C, h, w)``
            differs from the stream's first is skipped as ``bad_shape``.
        stall_timeout: seconds without a byte of shard data (every shard failing: the storage is down) after
            which the stream ends with a ``DATA_STOP`` sample naming the last error (the trainer then stops
            with a checkpoint, :func:`ls_video.preemption.stop_for_data`); ``None``: wait forever. Checked
            between shard attempts, so the stop comes at most one shard's ``read_timeout`` (and retries) later.

    With ``split_by="sample"`` every rank / worker keeps the same number of samples (``N // (ranks x workers)``
    of the ``N`` good ones; the last few are dropped), so ranks never run different numbers of batches.
    """

    def __init__(self, urls: str | list[str], rank: int = 0, world_size: int = 1, resampled: bool = False,
                 epoch_length: int | None = None, shuffle_buffer: int = 0, num_frames: int | None = None,
                 seed: int = 0, split_by: str = "shard", remote: RemoteOptions | None = None,
                 mixed_shapes: bool = False, stall_timeout: float | None = None) -> None:
        super().__init__()
        if stall_timeout is not None and stall_timeout <= 0:
            raise UsageError(f"stall_timeout must be > 0 seconds (or null: wait forever), got {stall_timeout}")
        self.stall_timeout = stall_timeout
        self.last_error: str | None = None
        self._progress = time.monotonic()  # when data last arrived
        self.remote = remote or RemoteOptions()
        if split_by not in ("shard", "sample"):
            raise UsageError(f"split_by must be 'shard' or 'sample', got {split_by!r}")
        if split_by == "sample" and resampled:
            raise UsageError("split_by='sample' reads every shard once; it cannot be resampled")
        if split_by == "sample" and shuffle_buffer > 0:
            raise UsageError("split_by='sample' keeps every rank's share of one order; it cannot be shuffled")
        self.split_by, self.mixed_shapes = split_by, mixed_shapes
        self.urls = expand(urls)
        if not self.urls:
            raise UsageError(f"no shards match {urls!r}")
        check_protocols(self.urls)
        self.rank, self.world_size = rank, world_size
        self.resampled, self.epoch_length = resampled, epoch_length
        self.shuffle_buffer, self.num_frames, self.seed = shuffle_buffer, num_frames, seed
        self.skipped: Counter = Counter()
        self.skipped_by_shard: Counter = Counter()
        self._sample_shape: tuple | None = None  # (C, h, w) of the first good sample; others must match
        self.yielded = 0
        self._iteration = 0

    def _worker(self) -> tuple[int, int]:
        info = torch.utils.data.get_worker_info()
        return (info.id, info.num_workers) if info is not None else (0, 1)

    def shard_urls(self) -> Iterator[dict]:
        worker, num_workers = self._worker()
        rng = random.Random(f"{self.seed}-{self.rank}-{worker}-{self._iteration}")
        if self.resampled:
            while True:
                yield {"url": rng.choice(self.urls)}
        order = list(self.urls)
        if self.split_by == "sample":  # every rank reads all shards in order; samples are split later
            yield from ({"url": url} for url in order)
            return
        random.Random(f"{self.seed}-{self._iteration}").shuffle(order)  # same order on every rank
        order = order[: len(order) - len(order) % self.world_size]  # as many shards on every rank (the rest:
        for url in order[self.rank :: self.world_size][worker::num_workers]:  # next pass, in another order)
            yield {"url": url}

    def _skip(self, reason: str, detail: str, url: str | None = None) -> None:
        self.skipped[reason] += 1
        if url:
            self.skipped_by_shard[url] += 1
        self.last_error = f"{reason}: {detail}"
        if self.skipped[reason] <= 3 or self.skipped[reason] % 100 == 0:
            log.warning("skipping bad sample (%s, %d so far): %s", reason, self.skipped[reason], detail)
        self._check_stall()

    def _check_stall(self) -> None:
        if self.stall_timeout is None or time.monotonic() - self._progress <= self.stall_timeout:
            return
        worker, _ = self._worker()
        failed = sum(self.skipped_by_shard.values())
        raise _Stalled(f"no shard data for {self.stall_timeout:g} s on rank {self.rank} (worker {worker}; "
                       f"{failed} shard reads failed so far), last error: {self.last_error or 'none'}")

    def _member_error(self, err: Exception) -> bool:
        """A bad tar member: skip it and go on, unless the shard's stream itself broke."""
        if isinstance(err, (ShardReadError, tarfile.ReadError)):
            raise err  # the shard's stream broke: end it (counted once, with its URL, in _expand)
        self._skip("bad_shard", f"{type(err).__name__}: {err}")
        return True

    def _expand(self, sources: Iterator[dict]) -> Iterator[dict]:
        """Tar members of each shard, then an end-of-shard marker; a shard that cannot be opened or
        breaks while read (timeout, truncated transfer, corrupt tar) is skipped and counted by reason."""
        for source in sources:
            url = source["url"]
            self._check_stall()
            try:
                stream = open_shard(url, self.remote)
            except ShardReadError as err:
                self._skip(err.reason, str(err), url)
                continue
            try:
                for member in wds.tariterators.tar_file_iterator(stream, handler=self._member_error):
                    self._progress = time.monotonic()
                    yield {**member, "__url__": url}
                    self._progress = time.monotonic()
            except _Stalled:
                raise
            except Exception as err:  # any broken shard is skipped and counted, never fatal
                reason = err.reason if isinstance(err, ShardReadError) else "bad_shard"
                self._skip(reason, f"{type(err).__name__}: {err}", url)
            finally:
                stream.close()
            yield {}  # end of shard: samples never straddle two shards

    def _crop(self, latents: np.ndarray, rng: random.Random) -> np.ndarray:
        if self.num_frames is None or latents.shape[0] == self.num_frames:
            return latents
        if latents.shape[0] < self.num_frames:
            raise BadSampleError("too_few_frames", f"{latents.shape[0]} < {self.num_frames}")
        start = rng.randrange(latents.shape[0] - self.num_frames + 1)
        return latents[start : start + self.num_frames]

    def stats(self, worker: int) -> dict:
        """Running counts of this worker's stream (they travel with each batch as ``data_stats``)."""
        return {"worker": worker, "yielded": self.yielded, "skipped": dict(self.skipped),
                "by_shard": dict(self.skipped_by_shard)}

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = self._worker()
        rng = random.Random(f"crop-{self.seed}-{self.rank}-{worker}-{self._iteration}")
        self._progress = time.monotonic()
        samples = wds.tariterators.group_by_keys(self._expand(self.shard_urls()), handler=self._member_error)
        try:
            yield from self._samples(samples, rng, worker, num_workers)
        except _Stalled as err:
            log.error("%s", err)
            yield {DATA_STOP: {"stalled": str(err)}}

    def _samples(self, samples: Iterator[dict], rng: random.Random, worker: int, num_workers: int) -> Iterator[dict]:
        """Decoded, cropped samples of this rank / worker (``split_by="sample"``: its equal share), up to the limit."""
        slot, slots = self.rank * num_workers + worker, self.world_size * num_workers
        good, held = 0, None  # split_by="sample": good samples seen by this worker, its latest one
        if self.shuffle_buffer > 0:
            samples = wds.shuffle(self.shuffle_buffer, initial=min(100, self.shuffle_buffer), rng=rng)(samples)
        limit = None if self.epoch_length is None else max(1, self.epoch_length // num_workers)
        self._iteration += 1
        produced = 0
        for raw in samples:
            try:
                sample = decode_sample(raw)
                latents = self._crop(sample["latents"], rng)
                shape = tuple(latents.shape[1:])
                if self._sample_shape is None or self.mixed_shapes:
                    self._sample_shape = shape
                elif shape != self._sample_shape:
                    raise BadSampleError("bad_shape", f"(C, h, w) {shape} != the stream's {self._sample_shape}")
            except UnsafeShardError:
                raise
            except BadSampleError as err:
                self._skip(err.reason, f"{raw.get('__url__')}:{raw.get('__key__')} {err}", raw.get("__url__"))
                continue
            if self.split_by == "sample":  # every worker decodes every sample; each keeps its slot's, and
                index, good = good, good + 1  # yields it once the last slot has one too (equal counts)
                if index % slots == slot:
                    held = (latents, sample)
                if index % slots != slots - 1 or held is None:
                    continue
                (latents, sample), held = held, None
            self.yielded += 1
            out = {"latents": torch.from_numpy(np.ascontiguousarray(latents)), "caption": sample["caption"],
                   "key": sample["key"], "stats": self.stats(worker)}
            if "text_embeds" in sample:
                out["text_embeds"] = torch.from_numpy(sample["text_embeds"])
            yield out
            self._progress = time.monotonic()
            produced += 1
            if limit is not None and produced >= limit:
                return


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers ignore SIGTERM / SIGUSR1. Launchers that signal a whole
    process group (torchrun, SLURM) would otherwise kill them mid-batch, and the trainer could not reach the
    step boundary where it writes its preemption checkpoint; it ends its workers itself when it leaves.
    And a worker never outlives its trainer: :func:`die_with_parent`."""
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    die_with_parent()


def die_with_parent() -> None:
    """Linux: the kernel SIGKILLs this process when its parent dies, whatever killed the parent (SIGKILL, the
    OOM killer); without it, a worker retrying dead storage lives on as an orphan. A parent already gone before
    this ran is caught by comparing ``getppid()`` with the parent that started us."""
    parent = multiprocessing.parent_process()
    expected = parent.pid if parent is not None else None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux
        return
    if expected is not None and os.getppid() != expected:
        os._exit(1)


def resumed_seed(seed: int, step: int) -> int:
    """Stream seed of a run started (``step == 0``) or resumed at optimizer step ``step``: a resumed run
    continues with new, reproducible draws instead of replaying the ones it started with."""
    return seed if step == 0 else seed + 1_000_003 * step


def collate(samples: list[dict]) -> dict:
    """-> ``{"latents": (B, F, C, h, w), "captions": list[str], "keys": list[str], "data_stats": {...}}``
    (a ``DATA_STOP`` batch if the stream ended with a ``DATA_STOP`` sample)."""
    stop = next((s for s in samples if DATA_STOP in s), None)
    if stop is not None:
        return stop
    batch = {"latents": torch.stack([s["latents"] for s in samples]),
             "captions": [s["caption"] for s in samples], "keys": [s["key"] for s in samples],
             "data_stats": samples[-1]["stats"]}
    if all("text_embeds" in s for s in samples):
        batch["text_embeds"] = torch.stack([s["text_embeds"] for s in samples])
    return batch
