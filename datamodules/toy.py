"""``ToyDataModule``: the embedded default data. On first use it writes toy mp4 clips, encodes them
with the base model's VAE through the real preprocessing job (``datamodules.preprocess``) into a
cache folder, then streams those shards like any :class:`LatentVideoDataModule`."""

from __future__ import annotations

import gc
import glob
import hashlib
import json
import os
import shutil

from datamodules.latent_video import LatentVideoDataModule
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
        base: the base model folder whose ``vae/`` encodes the clips (same as the model's base).
        cache_dir: where videos and shards are cached (keyed by every setting below).
        num_train_clips: training clips to generate.
        num_val_clips: validation clips (disjoint from training).
        size: frame side in pixels.
        num_frames: frames per clip.
        fps: frame rate of the generated files.
        object_size: object side / diameter in pixels.
        min_travel: least distance covered per clip, as a fraction of ``size``.
        max_speed: fastest object speed in pixels per frame (``None``: as fast as fits).
        world_seed: seed of the generated clips.
        shard_size: clips per shard.
        images: also write one-frame image shards (``{cache}/shards/images``) for joint training.
        batch_size, num_workers, shuffle_buffer, resampled, epoch_length, seed, pin_memory,
        prefetch_factor: as in :class:`LatentVideoDataModule`.
    """

    def __init__(
        self,
        base: str,
        cache_dir: str = ".cache/toy",
        num_train_clips: int = 2000,
        num_val_clips: int = 64,
        size: int = 64,
        num_frames: int = 16,
        fps: int = 8,
        object_size: int = 16,
        min_travel: float = 0.25,
        max_speed: int | None = None,
        world_seed: int = 0,
        shard_size: int = 500,
        images: bool = False,
        batch_size: int = 8,
        num_workers: int = 1,
        shuffle_buffer: int = 500,
        resampled: bool = True,
        epoch_length: int | None = 2000,
        seed: int = 0,
        pin_memory: bool = True,
        prefetch_factor: int = 2,
    ) -> None:
        super().__init__(train_urls=[], val_urls=[], batch_size=batch_size, num_workers=num_workers,
                         shuffle_buffer=shuffle_buffer, resampled=resampled, epoch_length=epoch_length,
                         num_frames=None, seed=seed, pin_memory=pin_memory, prefetch_factor=prefetch_factor)
        self.base = base
        self.world = ToyWorld(size=size, num_frames=num_frames, fps=fps, object_size=object_size,
                              min_travel=min_travel, max_speed=max_speed)
        self.world.speeds()  # fail now, with a clear message, if the world is impossible
        self.counts = dict(train=num_train_clips, val=num_val_clips)
        self.world_seed, self.shard_size, self.images = world_seed, shard_size, images
        settings = dict(world=self.world.__dict__, counts=self.counts, seed=world_seed, shard_size=shard_size,
                        images=images, vae=_vae_fingerprint(base))
        digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
        self.root = os.path.join(cache_dir, f"toy-{digest}")
        self.settings = settings

    def shard_dir(self, split: str) -> str:
        return os.path.join(self.root, "shards", split)

    def prepare_data(self) -> None:
        """Generate and preprocess once; a finished cache has ``done.json``."""
        if os.path.isfile(os.path.join(self.root, "done.json")):
            return
        from datamodules.preprocess import preprocess

        jobs = [(split, n) for split, n in self.counts.items() if n > 0]
        for split, n in jobs:
            videos = os.path.join(self.root, "videos", split)
            shutil.rmtree(videos, ignore_errors=True)
            self.world.write_videos(videos, n, split, self.world_seed)
            preprocess(videos, self.base, self.shard_dir(split), num_frames=self.world.num_frames, fps=None,
                       frame_stride=1, size=self.world.size, shard_size=self.shard_size, num_workers=0,
                       in_process=True)
        if self.images:
            images = os.path.join(self.root, "videos", "images")
            self.world.write_images(images, self.counts["train"], "train", self.world_seed)
            preprocess(images, self.base, self.shard_dir("images"), num_frames=1, fps=None, frame_stride=1,
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
        self.check_vae(stage)

    def image_urls(self) -> list[str]:
        return sorted(glob.glob(os.path.join(self.shard_dir("images"), "shard-*.tar")))
