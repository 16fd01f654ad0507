"""``ToyDataModule``: the embedded default data. On first use it writes toy mp4 clips, encodes them
with the base model's VAE through the real preprocessing job (``ls_video.datamodules.preprocess``) into a
cache folder, then streams those shards like any :class:`LatentVideoDataModule`."""

from __future__ import annotations

import dataclasses
import functools
import gc
import glob
import hashlib
import json
import os
import shutil
from typing import Any

from ls_video.datamodules.bucket_batches import BucketOptions
from ls_video.datamodules.buckets import Bucket
from ls_video.datamodules.latent_video import LatentVideoDataModule
from ls_video.errors import UsageError
from ls_video.toy.world import ToyWorld


def _vae_fingerprint(base: str) -> str:
    """Changes whenever the base's VAE weights change (size + mtime of its files)."""
    parts = []
    for path in sorted(glob.glob(os.path.join(base, "vae", "*"))):
        st = os.stat(path)
        parts.append(f"{os.path.basename(path)}:{st.st_size}:{int(st.st_mtime)}")
    return ";".join(parts) or base


class ToyDataModule(LatentVideoDataModule):
    """Toy "moving shapes" videos, preprocessed to latent shards on first use and cached.

    Args:
        base: the base model folder whose ``vae/`` encodes the clips; ``None`` (the default) takes the
            model's ``pretrained_model_name_or_path``, so a config names the base once.
        cache_dir: where videos and shards are cached (keyed by every setting below).
        num_train_clips: training clips to generate.
        num_val_clips: validation clips (disjoint from training).
        world: the clips' settings (:class:`~ls_video.toy.world.ToyWorld`: ``size``, ``num_frames``, ``fps``,
            ``object_size``, ``min_travel``, ``max_speed``, ``frame_sizes``). With ``frame_sizes`` the clips are
            preprocessed into one aspect-ratio bucket per frame size and streamed as bucketed batches
            (``buckets`` defaults to ``BucketOptions()``; ``batch_size`` is the largest frame size's).
        world_seed: seed of the generated clips.
        shard_size: clips per shard.
        images: also write one-frame image shards (``{cache}/shards/images``) for joint training.
        batch_size, num_workers, shuffle_buffer, epoch_length, and any other argument of
            :class:`LatentVideoDataModule` (``seed``, ``resampled``, ...): as there.
    """

    def __init__(
        self,
        base: str | None = None,
        cache_dir: str = ".cache/toy",
        num_train_clips: int = 2000,
        num_val_clips: int = 64,
        world: ToyWorld = ToyWorld(),
        world_seed: int = 0,
        shard_size: int = 500,
        images: bool = False,
        batch_size: int = 8,
        num_workers: int = 1,
        shuffle_buffer: int = 500,
        epoch_length: int | None = 2000,
        **kwargs: Any,
    ) -> None:
        world = ToyWorld(**world) if isinstance(world, dict) else dataclasses.replace(world)
        if world.frame_sizes and kwargs.get("buckets") is None:
            kwargs["buckets"] = BucketOptions()  # mixed frame sizes: one bucket per batch
        super().__init__(train_urls=[], val_urls=[], batch_size=batch_size, num_workers=num_workers,
                         shuffle_buffer=shuffle_buffer, epoch_length=epoch_length, num_frames=None, **kwargs)
        self.base = base
        self.world = world
        self.world.speeds()  # fail now, with a clear message, if the world is impossible
        self.counts = dict(train=num_train_clips, val=num_val_clips)
        self.world_seed, self.shard_size, self.images, self.cache_dir = world_seed, shard_size, images, cache_dir

    def base_path(self) -> str:
        """``base``, or the model's base when the datamodule runs under a Trainer."""
        if self.base is None:
            trainer = getattr(self, "trainer", None)
            module = trainer.lightning_module if trainer is not None else None
            self.base = getattr(module, "hparams", {}).get("pretrained_model_name_or_path") if module else None
            if self.base is None:
                raise UsageError("ToyDataModule needs `base` (or a model with pretrained_model_name_or_path)")
        return self.base

    @functools.cached_property
    def settings(self) -> dict:
        """Everything the cache depends on (computed once: it stats the base's VAE files)."""
        world = {k: v for k, v in self.world.__dict__.items()  # defaults left out: old caches stay valid
                 if (k != "frame_sizes" or v is not None) and (k != "wrap" or v)}
        return dict(world=world, counts=self.counts, seed=self.world_seed, shard_size=self.shard_size,
                    images=self.images, vae=_vae_fingerprint(self.base_path()))

    @functools.cached_property
    def root(self) -> str:
        digest = hashlib.sha1(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:12]
        return os.path.join(self.cache_dir, f"toy-{digest}")

    def shard_dir(self, split: str) -> str:
        return os.path.join(self.root, "shards", split)

    def prepare_data(self) -> None:
        """Generate and preprocess once; a finished cache has ``done.json``."""
        if os.path.isfile(os.path.join(self.root, "done.json")):
            return
        from ls_video.datamodules.preprocess import preprocess

        jobs = [(split, n) for split, n in self.counts.items() if n > 0]
        for split, n in jobs:
            videos = os.path.join(self.root, "videos", split)
            shutil.rmtree(videos, ignore_errors=True)
            self.world.write_videos(videos, n, split, self.world_seed)
            preprocess(videos, self.base_path(), self.shard_dir(split), num_frames=self.world.num_frames, fps=None,
                       frame_stride=1, size=self.world.size, shard_size=self.shard_size, num_workers=0,
                       in_process=True, buckets=tuple(Bucket(w, h) for w, h in self.world.frame_sizes or ()))
        if self.images:
            images = os.path.join(self.root, "videos", "images")
            self.world.write_images(images, self.counts["train"], "train", self.world_seed)
            preprocess(images, self.base_path(), self.shard_dir("images"), num_frames=1, fps=None, frame_stride=1,
                       size=self.world.size, shard_size=self.shard_size, num_workers=0, in_process=True)
        with open(os.path.join(self.root, "done.json"), "w") as f:
            json.dump(self.settings, f, indent=2)
        # Free the PyAV codec contexts left in reference cycles now, while their FFmpeg threads exist: a
        # DataLoader worker forked later would otherwise collect them and hang for ever in
        # avcodec_free_context (seen in `make demo` on a fresh cache: training stalled at step 0).
        gc.collect()

    def setup(self, stage: str | None = None) -> None:
        self.train_urls = sorted(glob.glob(os.path.join(self.shard_dir("train"), "shard-*.tar")))
        val = sorted(glob.glob(os.path.join(self.shard_dir("val"), "shard-*.tar")))
        self.val_urls = val or None
        if not self.train_urls:
            raise FileNotFoundError(f"no toy shards in {self.shard_dir('train')}; did prepare_data run?")
        self.check_shards(stage)

    def image_urls(self) -> list[str]:
        return sorted(glob.glob(os.path.join(self.shard_dir("images"), "shard-*.tar")))
