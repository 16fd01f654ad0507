"""Lightning datamodules over latent shards (format: docs/DATA.md)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ls_video.datamodules.bucket_batches import (
    BucketBatches,
    BucketOptions,
    BucketTable,
    index_path,
    read_index,
    unbatched,
)
from ls_video.datamodules.storage import RemoteOptions
from ls_video.datamodules.stream import LatentClipStream, collate, expand, ignore_stop_signals, resumed_seed
from ls_video.datamodules.text_cache import check_text, read_empty
from ls_video.datamodules.vae_check import check_vae, first_meta
from ls_video.errors import UsageError
from ls_video.preemption import DATA_STOP, is_data_stop, next_batch, stop_for_data


class StoppableLoader(torch.utils.data.DataLoader):
    """A DataLoader whose wait for the next batch a stop signal ends (:func:`ls_video.preemption.next_batch`)."""

    def __iter__(self) -> Iterator[Any]:
        iterator = super().__iter__()
        return _Stoppable(iterator)


class _Stoppable:
    """Once a ``DATA_STOP`` batch came, every later ``next`` gives it again at once (under DDP the rest of the
    step's accumulation window runs on null micro-batches until the step's agreement ends the run)."""

    def __init__(self, iterator: Iterator[Any]) -> None:
        self.iterator = iterator
        self.stopped: Any = None

    def __iter__(self) -> _Stoppable:
        return self

    def __next__(self) -> Any:
        if self.stopped is None:
            batch = next_batch(self.iterator)
            if not is_data_stop(batch):
                return batch
            self.stopped = batch
        return {DATA_STOP: dict(self.stopped[DATA_STOP])}

    def __len__(self) -> int:
        return len(self.iterator)


class LatentVideoDataModule(L.LightningDataModule):
    """Streams precomputed video latents from WebDataset shards.

    Batches are ``{"latents": (B, F, C, h, w) float16, "captions": list[str], "keys": list[str],
    "data_stats": {worker, yielded, skipped, by_shard}}`` (plus ``text_embeds`` when the shards carry them).

    Args:
        train_urls: training shards: a brace pattern (``shards/{000000..000099}.tar``), a list,
            local paths or any URL / ``pipe:`` webdataset accepts.
        val_urls: validation shards (read once per validation, in order); ``None`` disables validation.
        batch_size: clips per batch on each device.
        num_workers: DataLoader worker processes per device.
        shuffle_buffer: samples held in the shuffle buffer (0 disables).
        resampled: draw training shards at random forever (best for DDP: no rank runs dry).
        epoch_length: training samples per device per epoch (for resampled streams).
        num_frames: random temporal crop to this many frames; ``None`` keeps the shards' length.
        seed: seed for shard order, shuffling and crops. A run resumed from a checkpoint saved at step
            ``s`` draws its training stream from ``(seed, s)`` instead, so it continues with new draws
            rather than replaying the ones it started with (see docs/RELIABILITY.md).
        prefetch_factor: batches prefetched per worker (batches are pinned when a GPU is present).
        remote: timeouts and retries of remote shards (:class:`~ls_video.datamodules.storage.RemoteOptions`):
            ``connect_timeout`` (seconds to connect to an http(s) server), ``read_timeout`` (seconds without
            a byte, http(s) or ``pipe:``, before a shard is abandoned as ``timeout``; training never waits
            longer on one shard), ``retries`` (extra attempts to open a shard, exponential backoff from
            ``backoff`` seconds, before it is skipped and counted in ``data/skipped_{reason}``), ``storage_options``.
        storage_options: fsspec options of the shards' filesystem (``s3://``, ``gs://``, ``hf://``, http(s)), merged
            over ``remote.storage_options``: ``{"headers": {"Authorization": "Bearer ..."}}``,
            ``{"endpoint_url": "http://minio:9000"}``, or one dict per protocol (``{"s3": {...}}``); docs/DATA.md.
        allow_vae_mismatch: train even when the shards record another VAE than the model's (by default
            ``fit`` stops before the first step with one line naming both).
        buckets: bucket-homogeneous batches from shards of mixed shapes (``preprocess --buckets``;
            :class:`~ls_video.datamodules.bucket_batches.BucketOptions`: ``index``, ``budget``, ``batch_sizes``);
            ``batch_size`` is then the batch of the largest bucket, smaller buckets get proportionally more
            clips, and an epoch is ``epoch_length // batch_size`` batches per device. ``None``: one shape.
        stall_timeout: seconds without any shard data (every shard unreadable: the storage is down) before the
            run stops, on every rank, with ``last.ckpt`` and one ``DataStalledError`` line naming the last storage
            error; ``null``: wait forever. Set it well above ``remote.read_timeout``.

    Every rank gets the same number of batches: validation keeps ``N // (ranks x workers)`` samples per worker;
    a non-resampled training pass gives every rank as many shards (and needs at least ``ranks x num_workers``).
    """

    def __init__(
        self,
        train_urls: str | list[str],
        val_urls: str | list[str] | None = None,
        batch_size: int = 4,
        num_workers: int = 2,
        shuffle_buffer: int = 1000,
        resampled: bool = True,
        epoch_length: int | None = 10_000,
        num_frames: int | None = None,
        seed: int = 0,
        prefetch_factor: int = 2,
        remote: RemoteOptions = RemoteOptions(),
        allow_vae_mismatch: bool = False,
        buckets: BucketOptions | None = None,
        storage_options: dict[str, Any] | None = None,
        stall_timeout: float | None = 600.0,
    ) -> None:
        super().__init__()
        self.buckets = BucketOptions(**buckets) if isinstance(buckets, dict) else buckets
        if self.buckets is not None and num_frames is not None:
            raise UsageError("num_frames crops every clip to one length; with buckets, clip lengths are the shards' "
                             "frame buckets: drop num_frames")
        self._table: BucketTable | None = None
        self.allow_vae_mismatch = allow_vae_mismatch
        self.remote = RemoteOptions(**remote) if isinstance(remote, dict) else remote
        if storage_options:
            self.remote = replace(self.remote, storage_options={**self.remote.storage_options, **storage_options})
        if batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}")
        if num_frames is not None and num_frames < 1:
            raise UsageError(f"num_frames must be >= 1, got {num_frames}")
        if stall_timeout is not None and stall_timeout <= 0:
            raise UsageError(f"stall_timeout must be > 0 seconds (or null: wait forever), got {stall_timeout}")
        self.stall_timeout = stall_timeout
        self.train_urls, self.val_urls = train_urls, val_urls
        self.batch_size, self.num_workers = batch_size, num_workers
        self.shuffle_buffer, self.resampled, self.epoch_length = shuffle_buffer, resampled, epoch_length
        self.num_frames, self.seed = num_frames, seed
        self.prefetch_factor = prefetch_factor
        self.resumed_at_step = 0  # set from the checkpoint by load_state_dict
        self.empty_text_embeds: torch.Tensor | None = None  # cached empty-prompt embedding, when the shards have one

    def setup(self, stage: str | None = None) -> None:
        self.check_shards(stage)

    def check_shards(self, stage: str | None) -> None:
        """Before fitting: the shards' recorded VAE must be the model's (see ``allow_vae_mismatch``), and so must
        their text encoder when they carry text embeddings (:mod:`ls_video.datamodules.text_cache`); the first shard's
        record is read once for both."""
        trainer = getattr(self, "trainer", None)
        module = trainer.lightning_module if trainer is not None else None
        urls = expand(self.train_urls)
        if stage not in ("fit", None) or module is None or not urls:
            return
        meta = first_meta(urls[0], self.remote)
        if not self.allow_vae_mismatch and getattr(module, "vae", None) is not None:
            check_vae(urls[0], meta, module.vae, module.hparams.get("pretrained_model_name_or_path"))
        if getattr(module, "unet", None) is None:
            return
        meta = meta or {}
        if "text_encoder_fingerprint" in meta:
            self.empty_text_embeds = read_empty(urls[0], self.remote)
        check_text(meta, module, self.empty_text_embeds, bool(module.hparams.get("cached_text_embeddings")))

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Batches with cached text embeddings carry the cached empty-prompt one too (caption dropout's target).
        First, on every rank: a ``DATA_STOP`` batch on any rank (a stall, a signal while waiting for data) ends
        the run with a checkpoint (:func:`~ls_video.preemption.stop_for_data`)."""
        trainer = getattr(self, "trainer", None)
        if any(getattr(trainer, stage, False) for stage in ("training", "validating", "sanity_checking")):
            stop_for_data(trainer, batch)
        if self.empty_text_embeds is not None and isinstance(batch, dict) and "text_embeds" in batch:
            batch["empty_text_embeds"] = self.empty_text_embeds
        return batch

    def state_dict(self) -> dict:
        """Saved in every checkpoint: the step it was taken at (the resumed stream's seed)."""
        trainer = getattr(self, "trainer", None)
        return {"saved_at_step": int(trainer.global_step) if trainer is not None else self.resumed_at_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self.resumed_at_step = int(state_dict.get("saved_at_step", 0))

    def train_seed(self) -> int:
        """``seed`` for a fresh run; a different, reproducible seed after each resume point."""
        return resumed_seed(self.seed, self.resumed_at_step)

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def bucket_table(self) -> BucketTable | None:
        """Batch size per bucket (``buckets`` set), read from the shards' index once; logs the table."""
        if self.buckets is None or self._table is not None:
            return self._table
        path = index_path(self.buckets, expand(self.train_urls))
        self._table = BucketTable(read_index(path, self.remote), self.batch_size, self.buckets)
        rank_zero_info(f"bucketed batches (budget {self._table.budget} latent pixels x frames):\n"
                       + self._table.describe())
        self._table.warn_tiny(rank_zero_warn)
        return self._table

    def train_stream(self) -> LatentClipStream | BucketBatches:
        rank, world = self._rank()
        bucketed = self.bucket_table() is not None
        stream = LatentClipStream(self.train_urls, rank, world, resampled=self.resampled,
                                  epoch_length=self.epoch_length if self.resampled and not bucketed else None,
                                  shuffle_buffer=self.shuffle_buffer, num_frames=self.num_frames,
                                  seed=self.train_seed(), remote=self.remote, mixed_shapes=bucketed,
                                  stall_timeout=self.stall_timeout)
        slots = world * max(1, self.num_workers)
        if not self.resampled and len(stream.urls) < slots:
            raise UsageError(f"resampled: false with {len(stream.urls)} training shards for {world} rank(s) x "
                             f"{max(1, self.num_workers)} worker(s): some would get no data (and the ranks "
                             f"different numbers of batches); give at least {slots} shards, fewer num_workers, or "
                             "resampled: true")
        if not bucketed:
            return stream
        batches = max(1, self.epoch_length // self.batch_size) if self.resampled and self.epoch_length else None
        return BucketBatches(stream, self._table, batches)

    def val_stream(self) -> LatentClipStream | BucketBatches:
        rank, world = self._rank()
        table = self.bucket_table()
        stream = LatentClipStream(self.val_urls, rank, world, num_frames=self.num_frames, seed=self.seed,
                                  split_by="sample", remote=self.remote, mixed_shapes=table is not None,
                                  stall_timeout=self.stall_timeout)
        return stream if table is None else BucketBatches(stream, table)

    def _loader(self, stream: LatentClipStream | BucketBatches, workers: int) -> torch.utils.data.DataLoader:
        use_cuda = torch.cuda.is_available()
        whole = isinstance(stream, BucketBatches)  # the dataset yields whole batches
        return StoppableLoader(
            stream, batch_size=None if whole else self.batch_size, num_workers=workers,
            collate_fn=unbatched if whole else collate,
            pin_memory=use_cuda, persistent_workers=workers > 0, worker_init_fn=ignore_stop_signals,
            prefetch_factor=self.prefetch_factor if workers > 0 else None,
        )

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader(self.train_stream(), self.num_workers)

    def val_dataloader(self) -> torch.utils.data.DataLoader | list:
        if self.val_urls is None:
            return []
        return self._loader(self.val_stream(), min(self.num_workers, 1))


class ImageLatentDataModule(LatentVideoDataModule):
    """The same shards as images: one random frame per clip (``F = 1``), or ``F = 1`` image shards.

    Takes every argument of :class:`LatentVideoDataModule` except ``num_frames`` (always 1).
    """

    def __init__(self, train_urls: str | list[str], batch_size: int = 16, **kwargs: Any) -> None:
        if "num_frames" in kwargs:
            raise UsageError("ImageLatentDataModule always yields one frame; drop num_frames")
        super().__init__(train_urls, batch_size=batch_size, num_frames=1, **kwargs)
