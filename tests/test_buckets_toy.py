"""The toy world in several aspect ratios (issue #27): clips, caches and bucketed toy batches."""

import io
from collections import Counter

import numpy as np
import pytest

from ls_video.datamodules import ToyDataModule
from ls_video.errors import UsageError
from ls_video.toy.world import ToyWorld

SIZES = [(24, 16), (16, 24), (16, 16)]


def test_clips_come_in_every_frame_size_and_stay_inside():
    """An object that leaves a narrow frame (room taken from the wrong axis) fails here."""
    world = ToyWorld(size=16, num_frames=4, object_size=4, frame_sizes=SIZES)
    clips = world.clips(60)
    assert Counter(c.frame for c in clips).keys() == set(SIZES)
    for clip in clips:
        video = world.render(clip)
        width, height = clip.frame
        assert video.shape == (4, height, width, 3)
        for x, y in clip.positions:
            assert 0 <= x <= width - 4 and 0 <= y <= height - 4
        assert all((frame > 0).any() for frame in video)
    assert world.images(3)[0].shape == (3, 16, 16, 3)  # image batches keep one (square) shape
    with pytest.raises(UsageError, match="frame_sizes"):
        ToyWorld(size=16, object_size=8, frame_sizes=[(8, 16)])


def test_the_default_world_is_unchanged():
    """Without frame_sizes: the same clips, keys and cache folder as before the option existed."""
    clip = ToyWorld(size=32, num_frames=6, object_size=8).clips(1)[0]
    assert clip.frame is None and "x" not in clip.key().rsplit("-", 1)[-1]
    dm = ToyDataModule("base", world=ToyWorld(size=32, num_frames=6, object_size=8))
    assert "frame_sizes" not in dm.settings["world"] and dm.buckets is None


def test_toy_datamodule_with_frame_sizes_streams_bucketed_batches(tiny_base, tmp_path):
    dm = ToyDataModule(tiny_base, cache_dir=str(tmp_path), num_train_clips=24, num_val_clips=4, shard_size=8,
                       world=ToyWorld(size=16, num_frames=4, object_size=4, frame_sizes=SIZES), batch_size=2,
                       num_workers=0, epoch_length=40, images=True)
    dm.prepare_data()
    dm.setup("fit")
    assert set(dm.bucket_table().sizes) == {"24x16x4", "16x24x4", "16x16x4"}
    shapes = {}
    for batch in dm.train_dataloader():
        shapes.setdefault(batch["bucket"], set()).add(tuple(batch["latents"].shape[1:]))
    assert shapes == {"24x16x4": {(4, 4, 8, 12)}, "16x24x4": {(4, 4, 12, 8)}, "16x16x4": {(4, 4, 8, 8)}}
    import webdataset as wds

    first = next(iter(wds.WebDataset(dm.image_urls()[0], shardshuffle=False, empty_check=False)))
    assert np.load(io.BytesIO(first["latents.npy"]), allow_pickle=False).shape == (1, 4, 8, 8)  # square images
