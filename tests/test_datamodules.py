import io
import pickle

import numpy as np
import pytest
import torch
import webdataset as wds

from ls_video.datamodules import ImageLatentDataModule, LatentVideoDataModule, ToyDataModule
from ls_video.datamodules.shards import UnsafeShardError, encode_sample
from ls_video.datamodules.stream import LatentClipStream, collate
from ls_video.datamodules.synthetic import write_synthetic_shards
from ls_video.toy.world import ToyWorld


@pytest.fixture()
def shards(tmp_path):
    write_synthetic_shards(tmp_path, num_shards=4, per_shard=5, shape=(6, 4, 8, 8))
    return str(tmp_path / "shard-{000000..000003}.tar")


def captions(stream) -> list[str]:
    return [s["caption"] for s in stream]


def test_batches_have_the_documented_layout(shards):
    dm = LatentVideoDataModule(shards, shards, batch_size=3, num_workers=0, num_frames=4, epoch_length=9)
    batch = next(iter(dm.train_dataloader()))
    assert batch["latents"].shape == (3, 4, 4, 8, 8) and batch["latents"].dtype == torch.float16
    assert len(batch["captions"]) == 3 and all(c.startswith("clip ") for c in batch["captions"])
    assert sum(len(b["captions"]) for b in dm.train_dataloader()) == 9  # epoch_length
    assert sum(len(b["captions"]) for b in dm.val_dataloader()) == 20  # val reads every sample once


def test_image_datamodule_gives_single_frames(shards):
    dm = ImageLatentDataModule(shards, batch_size=2, num_workers=0)
    assert next(iter(dm.train_dataloader()))["latents"].shape == (2, 1, 4, 8, 8)


def test_ranks_and_workers_see_disjoint_samples(shards):
    seen = []
    for rank in range(2):
        stream = LatentClipStream(shards, rank=rank, world_size=2)
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
        seen.append(captions(loader))
    assert len(seen[0]) == len(seen[1]) == 10
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == {f"clip {i}" for i in range(20)}


def test_resampled_streams_differ_by_rank(shards):
    a = captions(LatentClipStream(shards, 0, 2, resampled=True, epoch_length=20))
    b = captions(LatentClipStream(shards, 1, 2, resampled=True, epoch_length=20))
    assert len(a) == len(b) == 20 and a != b


def write_tar(path, samples):
    with wds.TarWriter(str(path)) as w:
        for s in samples:
            w.write(s)


def good(i):
    return encode_sample(f"{i:09d}", np.zeros((2, 4, 8, 8), np.float16), f"clip {i}", {})


def test_corrupt_samples_are_skipped_and_counted(tmp_path):
    bad_npy = dict(good(1), **{"latents.npy": b"\x93NUMPY garbage"})
    nan = encode_sample("000000002", np.full((2, 4, 8, 8), np.nan, np.float16), "nan", {})
    wrong = encode_sample("000000003", np.zeros((4, 8, 8), np.float16), "3d", {})
    no_caption = dict(good(4), txt=b"")
    bad_utf8 = dict(good(5), txt=b"\xff\xfe")
    write_tar(tmp_path / "a.tar", [good(0), bad_npy, nan, wrong, no_caption, bad_utf8, good(6)])
    (tmp_path / "b.tar").write_bytes(open(tmp_path / "a.tar", "rb").read()[:700])  # truncated shard
    stream = LatentClipStream([str(tmp_path / "a.tar"), str(tmp_path / "b.tar")])
    got = captions(stream)
    assert "clip 0" in got and "clip 6" in got
    for reason in ("corrupt_npy", "non_finite", "bad_shape", "empty_caption", "bad_caption", "bad_shard"):
        assert stream.skipped[reason] >= 1, reason


def test_pickle_members_are_refused_and_never_loaded(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = dict(good(0), **{"extra.pickle": pickle.dumps(Payload())})
    write_tar(tmp_path / "evil.tar", [evil])
    with pytest.raises(UnsafeShardError, match="pickle"):
        captions(LatentClipStream(str(tmp_path / "evil.tar")))
    assert not marker.exists()
    # a pickled object disguised as .npy is not unpickled either
    buf = io.BytesIO()
    np.save(buf, np.array([Payload()], dtype=object), allow_pickle=True)
    write_tar(tmp_path / "disguised.tar", [dict(good(1), **{"latents.npy": buf.getvalue()})])
    stream = LatentClipStream(str(tmp_path / "disguised.tar"))
    assert captions(stream) == [] and stream.skipped["corrupt_npy"] == 1
    assert not marker.exists()


def test_no_shards_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no shards"):
        LatentClipStream([])


def test_collate_keeps_text_embeds():
    samples = [{"latents": torch.zeros(2, 4, 8, 8), "caption": "x", "key": "k", "stats": {},
                "text_embeds": torch.zeros(5, 3)}] * 2
    assert collate(samples)["text_embeds"].shape == (2, 5, 3)


def test_toy_datamodule_runs_the_real_preprocessing(tiny_base, tmp_path):
    dm = ToyDataModule(tiny_base, cache_dir=str(tmp_path), num_train_clips=6, num_val_clips=2,
                       world=ToyWorld(size=16, num_frames=4, object_size=4), shard_size=4, images=True,
                         batch_size=2, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_urls) == 2 and len(dm.val_urls) == 1 and len(dm.image_urls()) == 2
    batch = next(iter(dm.train_dataloader()))
    assert batch["latents"].shape == (2, 4, 4, 8, 8) and " moving " in batch["captions"][0]
    again = ToyDataModule(tiny_base, cache_dir=str(tmp_path), num_train_clips=6, num_val_clips=2,
                          world=ToyWorld(size=16, num_frames=4, object_size=4), shard_size=4, images=True)
    assert again.root == dm.root  # cached: same settings, same folder


def test_validation_split_by_sample_feeds_every_rank(tmp_path):
    write_synthetic_shards(tmp_path, num_shards=1, per_shard=5, shape=(2, 4, 8, 8))
    got = [captions(LatentClipStream(str(tmp_path / "shard-000000.tar"), r, 2, split_by="sample")) for r in range(2)]
    assert got == [["clip 0", "clip 2"], ["clip 1", "clip 3"]]  # equal shares: the odd last sample is dropped


def test_toy_preparation_leaves_no_codec_for_a_forked_worker(tiny_base, tmp_path):
    """A PyAV codec context still alive after prepare_data would be freed inside a forked DataLoader worker,
    where its FFmpeg threads are gone, and hang it."""
    import gc

    import av

    dm = ToyDataModule(tiny_base, cache_dir=str(tmp_path / "cache"), num_train_clips=8, num_val_clips=2,
                       world=ToyWorld(size=16, num_frames=4, object_size=4), shard_size=4, batch_size=2, num_workers=1)
    gc.disable()  # only prepare_data's own collection may free them
    try:
        dm.prepare_data()
        alive = [o for o in gc.get_objects() if isinstance(o, av.codec.context.CodecContext)]
    finally:
        gc.enable()
    assert not alive
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["latents"].shape[:2] == (2, 4)  # a forked worker delivers
