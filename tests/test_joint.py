"""Image-video joint training (ls_video.callbacks.JointImageVideo) and F = 1 training with ImageLatentDataModule."""

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from ls_video.batch import IMAGE_BATCH
from ls_video.callbacks import JointImageVideo
from ls_video.datamodules import ImageLatentDataModule, LatentVideoDataModule, ToyDataModule
from ls_video.errors import UsageError
from ls_video.module import LatentShiftModule
from ls_video.optim import OptimConfig
from ls_video.toy.world import ToyWorld

ROOT = Path(__file__).resolve().parents[1]


def toy(tiny_base, tmp_path, images=True):
    return ToyDataModule(tiny_base, cache_dir=str(tmp_path / "cache"), num_train_clips=8, num_val_clips=2,
                         world=ToyWorld(size=16, num_frames=4, object_size=4), shard_size=4, images=images,
                         batch_size=2, num_workers=0)


def fit(tmp_path, module, data, callbacks, steps):
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", default_root_dir=tmp_path, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        callbacks=callbacks, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, data)
    return trainer


class Spy(L.Callback):
    def __init__(self):
        self.batches = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        added = batch.get(IMAGE_BATCH)
        self.batches.append(dict(step=trainer.global_step, shape=tuple(batch["latents"].shape),
                                 captions=list(batch["captions"]), pid=batch.get("pid"),
                                 worker=batch["data_stats"]["worker"],
                                 added=None if added is None else tuple(added["latents"].shape)))


class PidJoint(JointImageVideo):
    """Records the process that collated each image batch (collate runs where the batch is loaded)."""

    def collate(self, samples):
        return dict(super().collate(samples), pid=os.getpid())


def test_the_choice_of_image_steps_is_a_function_of_the_step():
    assert [s for s in range(16) if JointImageVideo(ratio=0.25).is_image_step(s)] == [3, 7, 11, 15]
    assert sum(JointImageVideo(ratio=0.1).is_image_step(s) for s in range(1000)) == 100
    assert sum(JointImageVideo(ratio=1 / 3).is_image_step(s) for s in range(999)) == 333
    every = JointImageVideo(ratio=0.5)
    assert [every.is_image_step(s) for s in range(4)] == [False, True, False, True]
    assert [s for s in range(16) if JointImageVideo(ratio=0.25, start_step=8).is_image_step(s)] == [11, 15]
    assert not JointImageVideo().enabled and not JointImageVideo(ratio=0.0).enabled
    for bad in (dict(ratio=1.5), dict(ratio=-0.1), dict(num_workers=0), dict(batch_size=0)):
        with pytest.raises(ValueError):
            JointImageVideo(**bad)


def test_what_the_callback_reads_from_the_datamodule(tmp_path):
    """Unless told (image_urls, batch_size), the callback reads a LatentVideoDataModule: its training shards,
    batch size and clip length (a ToyDataModule's from its world). Fails if it goes back to probing attributes:
    another datamodule with look-alike attributes must get a one-line UsageError naming what to set."""
    video = LatentVideoDataModule(["a.tar", "b.tar"], batch_size=3, num_frames=5)
    assert JointImageVideo().resolve_urls(video) == (["a.tar", "b.tar"], "video frames")
    assert JointImageVideo().frame_budget(video) == 15 and JointImageVideo(batch_size=7).frame_budget(video) == 7
    data = ToyDataModule(cache_dir=str(tmp_path), world=ToyWorld(size=16, num_frames=4, object_size=4), batch_size=2)
    assert JointImageVideo().frame_budget(data) == 8
    with pytest.raises(UsageError, match="set batch_size"):
        JointImageVideo().frame_budget(LatentVideoDataModule(["a.tar"], batch_size=3))  # clips as stored: unknown
    other = L.LightningDataModule()
    other.train_urls, other.batch_size, other.num_frames = ["a.tar"], 3, 5
    with pytest.raises(UsageError, match="set image_urls"):
        JointImageVideo().resolve_urls(other)
    with pytest.raises(UsageError, match="set batch_size"):
        JointImageVideo().frame_budget(other)
    assert JointImageVideo(image_urls="i.tar", batch_size=4).resolve_urls(other) == ("i.tar", "image_urls")


def test_image_batches_arrive_at_the_ratio_from_their_own_workers(tiny_base, tmp_path):
    """ratio 0.25: every 4th step is a batch of 8 one-frame latents (the video batch's 2 x 4 frames) with
    image captions, collated in a persistent worker process; both losses are logged apart."""
    data = toy(tiny_base, tmp_path)
    joint, spy = PidJoint(ratio=0.25), Spy()
    module = LatentShiftModule(tiny_base, optim=OptimConfig(warmup_steps=0))
    trainer = fit(tmp_path, module, data, [joint, spy], steps=8)
    assert [b["shape"][:2] for b in spy.batches] == [(2, 4)] * 3 + [(8, 1)] + [(2, 4)] * 3 + [(8, 1)]
    images = [b for b in spy.batches if b["shape"][1] == 1]
    assert joint.image_steps == 2 and [b["step"] for b in images] == [3, 7]
    assert all(b["pid"] is not None and b["pid"] != os.getpid() for b in images)  # not the main process
    assert all(b["worker"] == "image-0" for b in images)
    assert all("moving" not in c for b in images for c in b["captions"])  # the toy world's image captions
    assert all("moving" in c for b in spy.batches if b["shape"][1] > 1 for c in b["captions"])
    assert {"train/loss", "train/loss_image"} <= set(trainer.callback_metrics)
    assert joint._images is None  # workers shut down at the end of training


def test_frames_from_video_shards_with_image_captions(tiny_base, tmp_path):
    """Without image shards the stream draws one frame per clip of the video shards; caption_regex turns
    their captions into image captions."""
    data = toy(tiny_base, tmp_path, images=False)
    joint, spy = JointImageVideo(ratio=0.5, batch_size=3, caption_regex=r" moving \w+"), Spy()
    fit(tmp_path, LatentShiftModule(tiny_base, optim=OptimConfig(warmup_steps=0)), data, [joint, spy], steps=4)
    assert [b["shape"][:2] for b in spy.batches] == [(2, 4), (3, 1), (2, 4), (3, 1)]
    assert joint.resolve_urls(data)[1] == "video frames"
    assert all(c.startswith("a ") and "moving" not in c for b in spy.batches[1::2] for c in b["captions"])


def test_add_mode_trains_the_image_batch_besides_every_video_batch(tiny_base, tmp_path):
    """mode "add": every step keeps its video batch; image steps also carry an image batch whose loss is
    added (both logged apart); the added loss is the image batch's own, on the step's generator."""
    data = toy(tiny_base, tmp_path)
    joint, spy = JointImageVideo(ratio=0.5, batch_size=3, mode="add"), Spy()
    module = LatentShiftModule(tiny_base, optim=OptimConfig(warmup_steps=0))
    trainer = fit(tmp_path, module, data, [joint, spy], steps=4)
    assert [b["shape"][:2] for b in spy.batches] == [(2, 4)] * 4
    assert [b["added"] and b["added"][:2] for b in spy.batches] == [None, (3, 1), None, (3, 1)]
    assert {"train/loss", "train/loss_image"} <= set(trainer.callback_metrics)

    batch = next(iter(data.train_dataloader()))
    images = next(iter(joint.make_loader(trainer)))
    module = LatentShiftModule(tiny_base)  # no trainer: training_step's self.log is a no-op
    with torch.no_grad():
        generator = module.step_generator()  # the noise of this step, drawn for the videos, then the images
        video, image = module.batch_loss(batch, generator), module.batch_loss(images, generator)
        assert module.training_step({**batch, IMAGE_BATCH: images}, 0).item() == pytest.approx((video + image).item())
        assert module.training_step(batch, 0).item() == pytest.approx(video.item())
    with pytest.raises(ValueError, match="mode must be one of"):
        JointImageVideo(ratio=0.5, mode="concat")


@pytest.mark.parametrize("source", ["images", "train"])
def test_image_latent_datamodule_trains_one_frame(tiny_base, tmp_path, source):
    """ImageLatentDataModule alone: F = 1 batches from image shards or one frame of each video clip,
    logged as train/loss_image only."""
    shards = toy(tiny_base, tmp_path)
    shards.prepare_data()
    urls = sorted(str(p) for p in Path(shards.shard_dir(source)).glob("shard-*.tar"))
    data = ImageLatentDataModule(urls, batch_size=3, num_workers=1, shuffle_buffer=4)
    spy = Spy()
    trainer = fit(tmp_path, LatentShiftModule(tiny_base, optim=OptimConfig(warmup_steps=0)), data, [spy], steps=3)
    assert [b["shape"][:2] for b in spy.batches] == [(3, 1)] * 3
    assert "train/loss_image" in trainer.callback_metrics and "train/loss" not in trainer.callback_metrics
    assert torch.isfinite(trainer.callback_metrics["train/loss_image"])


def write_config(tmp_path: Path, base: str, name: str, mode: str = "replace", **trainer) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 8, "default_root_dir": str(tmp_path / "run"),
                    "logger": False, "enable_progress_bar": False, "num_sanity_val_steps": 0, "limit_val_batches": 0,
                    "callbacks": [{"class_path": "ls_video.callbacks.JointImageVideo",
                                   "init_args": {"ratio": 0.5, "start_step": 3, "batch_size": 3, "mode": mode}},
                                  {"class_path": "record_mix.RecordMix",
                                   "init_args": {"out": str(tmp_path / name)}}], **trainer},
        "checkpoint": {"every_n_train_steps": 4},
        "model": {"pretrained_model_name_or_path": base, "optim": {"warmup_steps": 0, "learning_rate": 1e-3}},
        "data": {"class_path": "ls_video.datamodules.ToyDataModule",
                 "init_args": {"base": base, "cache_dir": str(tmp_path / "cache"), "num_train_clips": 8,
                               "num_val_clips": 2, "world": {"size": 16, "num_frames": 4, "object_size": 4},
                               "batch_size": 2, "num_workers": 0, "shard_size": 4, "images": True}},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{ROOT}{os.pathsep}"
                                       f"{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "train.py", "fit", *args], cwd=ROOT, capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


def mix(folder: Path, rank: int = 0) -> list[tuple[int, int]]:
    return [(step, frames) for step, frames, _, _ in json.loads((folder / f"rank{rank}.json").read_text())]


@pytest.mark.slow
def test_resume_keeps_the_mix(tiny_base, tmp_path):
    """8 steps at once, or 4 then resumed to 8: the same steps are image steps (half of them from step 3, a
    function of the step: fails if a resume restarts the mix or the image stream's shapes)."""
    straight = tmp_path / "straight"
    straight.mkdir()
    train("-c", str(write_config(straight, tiny_base, "mix")))
    split = tmp_path / "split"
    split.mkdir()
    train("-c", str(write_config(split, tiny_base, "first", max_steps=4)))
    train("-c", str(write_config(split, tiny_base, "resumed")), "--ckpt_path", "last")
    whole = mix(straight / "mix")
    assert [s for s, _ in whole] == list(range(8)) and {f for _, f in whole} == {1, 4}  # both kinds occur
    assert mix(split / "first") + mix(split / "resumed") == whole
    assert whole == [(s, 1 if JointImageVideo(ratio=0.5, start_step=3).is_image_step(s) else 4) for s in range(8)]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["replace", "add"])
def test_ddp_ranks_share_the_mix_and_draw_different_images(tiny_base, tmp_path, mode):
    """2 CPU processes (gloo): both ranks run image steps at the same steps, on different images (mode
    "add": the image batch rides along with the video batch through one DDP forward and backward)."""
    train("-c", str(write_config(tmp_path, tiny_base, "ddp", mode=mode, devices=2, strategy="ddp")))
    ranks = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in range(2)]
    assert [s[:3] for s in ranks[0]] == [s[:3] for s in ranks[1]]
    assert {s[1] for s in ranks[0]} == {1, 4}
    image_keys = [[k for s in rank if s[1] == 1 for k in s[3]] for rank in ranks]
    assert image_keys[0] != image_keys[1]
