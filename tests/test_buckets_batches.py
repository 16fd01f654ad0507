"""Bucketed batches (issue #27): homogeneous, budget-scaled, proportional, tiny buckets kept, workers, ranks,
resume."""

import json
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from ls_video.datamodules import LatentVideoDataModule
from ls_video.datamodules.bucket_batches import BucketOptions, BucketTable
from ls_video.datamodules.synthetic import write_bucketed_shards, write_synthetic_shards

# name: ((F, C, h, w), clips); with batch_size 4 the budget is 4 x 8*4*8 = 1024 latent pixels x frames
BUCKETS = {
    "64x32x8": ((8, 4, 4, 8), 120),  # the largest: batch 4
    "32x32x8": ((8, 4, 4, 4), 80),  # half the volume: batch 8
    "32x32x4": ((4, 4, 4, 4), 40),  # a quarter: batch 16
    "32x64x8": ((8, 4, 8, 4), 3),  # tiny: 3 clips, fewer than its batch of 4
}
SIZES = {"64x32x8": 4, "32x32x8": 8, "32x32x4": 16, "32x64x8": 3}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("bucketed")
    keys = write_bucketed_shards(out, BUCKETS, num_shards=8)
    return str(out / "shard-{000000..000007}.tar"), keys


def datamodule(urls, rank=0, world=2, **kw):
    dm = LatentVideoDataModule(urls, **{"batch_size": 4, "num_workers": 2, "shuffle_buffer": 50,
                                        "buckets": BucketOptions(), **kw})
    dm.trainer = SimpleNamespace(global_rank=rank, world_size=world, global_step=0, lightning_module=None)
    return dm


def batches_of(dm) -> list[dict]:
    """The train loader's batches without their tensors (keys, bucket, latent shape, data stats): holding
    hundreds of worker-shared tensors keeps one file descriptor each open in this process."""
    return [{"keys": b["keys"], "bucket": b["bucket"], "shape": tuple(b["latents"].shape[1:]),
             "data_stats": b["data_stats"]} for b in dm.train_dataloader()]


def check_homogeneous(batches, keys):
    """Every batch: one bucket, named right, of that bucket's batch size (or a smaller leftover)."""
    for b in batches:
        assert {keys[k] for k in b["keys"]} == {b["bucket"]}
        assert b["shape"] == BUCKETS[b["bucket"]][0]
        assert len(b["keys"]) <= SIZES[b["bucket"]]


def test_batch_sizes_follow_the_budget_and_tiny_buckets_are_named():
    """A budget bug (e.g. scaling by h*w without frames) gives 32x32x4 a batch of 8, not 16."""
    table = BucketTable({n: {"samples": c, "latent_shape": list(s)} for n, (s, c) in BUCKETS.items()}, 4,
                        BucketOptions())
    assert table.budget == 1024 and table.sizes == SIZES and table.tiny == ["32x64x8"]
    warned = []
    table.warn_tiny(warned.append)
    assert "32x64x8 (3 clips, batch 3)" in warned[0]
    assert table.batch_size((2, 4, 4, 4)) == 32 and table.name((2, 4, 4, 4)) == "latent_2x4x4x4"  # not indexed
    over = BucketTable({n: {"samples": c, "latent_shape": list(s)} for n, (s, c) in BUCKETS.items()}, 4,
                       BucketOptions(budget=512, batch_sizes={"32x32x8": 3}))
    assert over.sizes == {"64x32x8": 2, "32x32x8": 3, "32x32x4": 8, "32x64x8": 2}
    with pytest.raises(ValueError, match="does not list"):
        BucketTable({}, 4, BucketOptions(batch_sizes={"9x9x9": 1}))


def test_resampled_batches_are_homogeneous_and_proportional_with_two_workers(shards):
    """2 workers, 300 batches: each bucket's share of the clips within 5 points of its share of the data
    (greedy filling that favoured large buckets, or a worker that read only some shards, fails here)."""
    urls, keys = shards
    dm = datamodule(urls, epoch_length=1200)
    batches = batches_of(dm)
    assert len(batches) == 300  # epoch_length // batch_size, split over the 2 workers
    check_homogeneous(batches, keys)
    assert {b["data_stats"]["worker"] for b in batches} == {0, 1}
    seen = Counter()
    for b in batches:
        seen[b["bucket"]] += len(b["keys"])
        assert len(b["keys"]) == SIZES[b["bucket"]]  # an infinite stream never yields a partial batch
    total, data = sum(seen.values()), sum(c for _, c in BUCKETS.values())
    for name, (_, count) in BUCKETS.items():
        assert abs(seen[name] / total - count / data) < 0.05, (name, seen)
    assert seen["32x64x8"] > 0  # the tiny bucket is trained, not starved


def test_two_ranks_one_pass_read_every_clip_once(shards):
    """``resampled: false``, 2 ranks x 2 workers: disjoint, together every clip once; unfilled groups at the end
    come as smaller batches (nothing dropped)."""
    urls, keys = shards
    per_rank = []
    for rank in range(2):
        batches = batches_of(datamodule(urls, rank=rank, resampled=False, shuffle_buffer=0))
        check_homogeneous(batches, keys)
        per_rank.append([k for b in batches for k in b["keys"]])
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(keys)


def test_ranks_get_equal_batch_counts_and_their_own_draws(shards):
    """Under DDP every rank must run the same number of steps: equal counts, different samples."""
    urls, keys = shards
    runs = [batches_of(datamodule(urls, rank=r, epoch_length=200)) for r in range(2)]
    assert len(runs[0]) == len(runs[1]) == 50
    assert [b["keys"] for b in runs[0]] != [b["keys"] for b in runs[1]]


def test_a_resumed_stream_continues_with_new_reproducible_draws(shards):
    """The checkpoint's step seeds the resumed stream, as for unbucketed data: not a replay of the start."""
    urls, _ = shards

    def keys_of(step):
        dm = datamodule(urls, world=1, num_workers=1, epoch_length=80)
        if step:
            dm.load_state_dict({"saved_at_step": step})
        return [b["keys"] for b in dm.train_dataloader()]

    fresh, resumed, again = keys_of(0), keys_of(10), keys_of(10)
    assert resumed == again and resumed != fresh


def test_buckets_refuse_num_frames_and_need_a_table(shards, tmp_path):
    urls, _ = shards
    with pytest.raises(ValueError, match="drop num_frames"):
        LatentVideoDataModule(urls, num_frames=4, buckets=BucketOptions())
    dm = datamodule(urls, buckets=BucketOptions(index=str(tmp_path / "index.json")))
    (tmp_path / "index.json").write_text('{"shards": []}')
    with pytest.raises(ValueError, match="no bucket table"):
        dm.train_dataloader()


def test_unbucketed_streams_still_skip_other_shapes(shards):
    """Without ``buckets`` mixed shards are not silently mixed: other shapes are skipped as ``bad_shape``."""
    urls, _ = shards
    dm = LatentVideoDataModule(urls, batch_size=2, num_workers=0, epoch_length=20)
    stream = dm.train_stream()
    assert len(list(stream)) == 20 and stream.skipped["bad_shape"] > 0
    assert torch.is_tensor(next(iter(dm.train_dataloader()))["latents"])


@pytest.mark.slow
def test_bucketed_fit_in_two_processes_resumes_with_joint_images_and_the_nan_guard(shards, tiny_base, tmp_path):
    """configs/toy.yaml's callbacks (JointImageVideo adding image batches from step 2, EMA, DataHealth, videos at
    validation) on bucketed shards, 2 gloo processes, rank 1's batch NaN at step 1, 4 steps, then resumed to 8:
    every step's batch is one bucket at its batch size, both ranks run every step (a rank with fewer batches
    would hang DDP), the NaN step is skipped on both, clips per bucket are logged summed over ranks, and the
    resumed steps draw other clips than the first ones."""
    from shipped import add_callback, run, shipped_toy, write
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    urls, keys = shards
    write_synthetic_shards(tmp_path / "images", num_shards=2, per_shard=8, shape=(1, 4, 4, 4))
    cfg = shipped_toy(tmp_path, tiny_base, devices=2, strategy="ddp", max_steps=4, val_check_interval=2,
                      limit_val_batches=1, log_every_n_steps=1)
    cfg["data"] = {"class_path": "ls_video.datamodules.LatentVideoDataModule",
                   "init_args": {"train_urls": urls, "val_urls": urls, "batch_size": 4, "num_workers": 2,
                                 "shuffle_buffer": 20, "buckets": {}}}
    for cb in cfg["trainer"]["callbacks"]:
        if cb["class_path"] == "ls_video.callbacks.JointImageVideo":
            cb["init_args"]["image_urls"] = str(tmp_path / "images" / "shard-{000000..000001}.tar")
    add_callback(cfg, "ls_video.callbacks.BucketCounts")
    records, states = {}, {}
    for name, extra in (("first", []), ("resumed", ["--trainer.max_steps", "8", "--ckpt_path", "last"])):
        add_callback(cfg, "record_buckets.RecordBuckets", out=str(tmp_path / name))
        add_callback(cfg, "nonfinite_on_rank.NonFiniteOnRank", out=str(tmp_path / name / "state"), rank=1, step=1)
        r = run("fit", "-c", str(write(cfg, tmp_path / f"{name}.yaml")), *extra, timeout=600)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
        records[name] = [json.loads((tmp_path / name / f"rank{k}.json").read_text()) for k in range(2)]
        states[name] = [json.loads((tmp_path / name / "state" / f"rank{k}.json").read_text()) for k in range(2)]
        del cfg["trainer"]["callbacks"][-2:]
    for ranks in records.values():
        for steps in ranks:
            assert len(steps) == 4
            for step, bucket, batch_keys, image_frames in steps:
                assert {keys[k] for k in batch_keys} == {bucket} and len(batch_keys) == SIZES[bucket]
                assert image_frames == (1 if step >= 2 else 0)  # JointImageVideo adds its images from step 2
        assert ranks[0] != ranks[1]
    assert [s[2] for s in records["resumed"][0]] != [s[2] for s in records["first"][0]]
    first, resumed = states["first"], states["resumed"]
    assert first[0] == first[1] and first[0]["global_step"] == 4 and first[0]["nonfinite_steps"] == 1
    assert resumed[0]["global_step"] == 8 and resumed[0]["weights"] == resumed[1]["weights"]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard" / "version_0"))
    events.Reload()
    logged = {t[len("data/bucket_"):]: events.Scalars(t)[-1].value for t in events.Tags()["scalars"]
              if t.startswith("data/bucket_")}
    trained = Counter(bucket for steps in records["first"] for _, bucket, batch_keys, _ in steps
                      for _ in batch_keys)
    assert {k: v for k, v in logged.items() if v} == trained  # both ranks' clips, at step 4 (not summed twice)


def test_the_shipped_bucketed_data_config_builds():
    """configs/data/webvid_buckets.yaml parses into a bucketed LatentVideoDataModule (a renamed option fails)."""
    from pathlib import Path

    import lightning as L
    import yaml
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_subclass_arguments(L.LightningDataModule, "data")
    path = Path(__file__).resolve().parents[1] / "configs" / "data" / "webvid_buckets.yaml"
    cfg = parser.parse_object({"data": yaml.safe_load(path.read_text())})
    dm = parser.instantiate_classes(cfg).data
    assert isinstance(dm, LatentVideoDataModule) and dm.buckets == BucketOptions() and dm.num_frames is None


def test_joint_images_refuse_frames_of_bucketed_shards(shards):
    """Frames drawn from mixed shards would be skipped as bad_shape and read as corrupt data by DataHealth."""
    from ls_video.callbacks import JointImageVideo

    with pytest.raises(ValueError, match="set image_urls"):
        JointImageVideo(ratio=0.5).resolve_urls(datamodule(shards[0]))
    assert JointImageVideo(ratio=0.5, image_urls="i.tar").resolve_urls(datamodule(shards[0])) == ("i.tar", "image_urls")
