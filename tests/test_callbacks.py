import glob

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from ls_video.callbacks import EMA, JointImageVideo, VideoLogger
from ls_video.callbacks.tensorboard_video import gif_bytes
from ls_video.datamodules import ToyDataModule
from ls_video.module import LatentShiftModule
from ls_video.optim import OptimConfig
from ls_video.performance import PerformanceConfig
from ls_video.toy.world import ToyWorld


@pytest.fixture()
def toy_data(tiny_base, tmp_path):
    return ToyDataModule(tiny_base, cache_dir=str(tmp_path / "cache"), num_train_clips=8, num_val_clips=2,
                         world=ToyWorld(size=16, num_frames=4, object_size=4), shard_size=4, images=True,
                         batch_size=2, num_workers=0)


def trainer(tmp_path, callbacks, steps=3, logger=False):
    return L.Trainer(max_steps=steps, accelerator="cpu", default_root_dir=tmp_path, logger=logger,
                     enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                     callbacks=callbacks, limit_val_batches=1, val_check_interval=steps, check_val_every_n_epoch=None,
                     num_sanity_val_steps=0)


def test_ema_needs_a_latent_shift_module():
    """EMA reads the module's ``unet`` and ``skipping_step`` (LatentShiftModule): another module is a one-line
    UsageError at the start of fit, not an AttributeError mid-step. Fails if the check is dropped."""
    from ls_video.errors import UsageError

    with pytest.raises(UsageError, match="LatentShiftModule"):
        EMA().on_fit_start(None, L.LightningModule())


def test_ema_math_and_swap(tiny_base, toy_data, tmp_path):
    module = LatentShiftModule(tiny_base, optim=OptimConfig(warmup_steps=0, learning_rate=1e-2))
    start = {n: p.detach().clone() for n, p in module.unet.named_parameters()}
    ema = EMA(decay=0.5, warmup=False)
    trainer(tmp_path, [ema], steps=2).fit(module, toy_data)
    assert ema.num_updates == 2
    name = "conv_in.weight"
    # shadow after two updates from start s0 with weights w1, w2: 0.25 s0 + 0.25 w1 + 0.5 w2
    w2 = module.unet.get_parameter(name).detach()
    assert not torch.equal(ema.shadow[name], w2) and not torch.equal(ema.shadow[name], start[name])
    with ema.swapped(module):
        assert torch.equal(module.unet.get_parameter(name), ema.shadow[name])
    assert torch.equal(module.unet.get_parameter(name), w2)


def test_video_logger_writes_files_and_tensorboard_gifs(tiny_base, toy_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    module = LatentShiftModule(tiny_base, optim=OptimConfig(warmup_steps=0))
    logger = TensorBoardLogger(tmp_path, name="tb")
    vl = VideoLogger(prompts=["a red square moving left"], every_n_steps=2, num_frames=3, num_inference_steps=2)
    trainer(tmp_path, [EMA(), vl], steps=2, logger=logger).fit(module, toy_data)
    assert glob.glob(str(tmp_path / "tb" / "version_0" / "videos" / "step_000002" / "*.mp4"))
    assert glob.glob(str(tmp_path / "tb" / "version_0" / "videos" / "step_000002" / "*contact_sheet.png"))
    events = EventAccumulator(str(tmp_path / "tb" / "version_0"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()["images"]
    assert tags, "no image summaries in the event file"
    image = events.Images(tags[0])[0]
    assert image.encoded_image_string.startswith(b"GIF89a") and image.step == 2


def test_video_logger_never_crashes_training(tiny_base, toy_data, tmp_path):
    module = LatentShiftModule(tiny_base, optim=OptimConfig(warmup_steps=0))
    vl = VideoLogger(prompts=["x"], every_n_steps=1, num_frames=2, num_inference_steps=1, size=(15, 16))  # bad size
    with pytest.warns(UserWarning, match="VideoLogger failed"):
        trainer(tmp_path, [vl], steps=2).fit(module, toy_data)


def test_joint_image_video_batches(tiny_base, toy_data, tmp_path):
    seen = []

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(batch["latents"].shape[1])

    module = LatentShiftModule(tiny_base, optim=OptimConfig(warmup_steps=0))
    joint = JointImageVideo(ratio=0.5, batch_size=3)
    trainer(tmp_path, [joint, Spy()], steps=4).fit(module, toy_data)
    assert seen == [4, 1, 4, 1] and joint.image_steps == 2


def test_gif_bytes_are_animated():
    frames = torch.rand(3, 8, 8, 3).numpy()
    data = gif_bytes(frames)
    import io

    from PIL import Image

    assert data.startswith(b"GIF89a") and Image.open(io.BytesIO(data)).n_frames == 3


def test_batch_size_finder_scales_the_datamodule(tiny_base, toy_data, tmp_path):
    from lightning.pytorch.callbacks import BatchSizeFinder

    module = LatentShiftModule(tiny_base, optim=OptimConfig(warmup_steps=0),
                               performance=PerformanceConfig(gradient_checkpointing=True))
    finder = BatchSizeFinder(mode="power", steps_per_trial=1, max_trials=2, init_val=2)
    trainer(tmp_path, [finder], steps=1).fit(module, toy_data)
    assert finder.optimal_batch_size == toy_data.batch_size == 4  # 2 -> 4, then max_trials reached


def test_cpu_threads_and_step_speed(tiny_base, toy_data, tmp_path):
    import json

    from ls_video.callbacks import CPUThreads, StepSpeed

    with pytest.raises(ValueError, match="num_threads"):
        CPUThreads(0)
    before = torch.get_num_threads()
    try:
        threads, speed = CPUThreads(1), StepSpeed()
        assert torch.get_num_threads() == 1  # already for prepare_data, before the trainer's setup
        module = LatentShiftModule(tiny_base, optim=OptimConfig(warmup_steps=0))
        logger = TensorBoardLogger(tmp_path, name="tb")
        trainer(tmp_path, [threads, speed], steps=3, logger=logger).fit(module, toy_data)
        saved = json.loads((tmp_path / "tb" / "version_0" / "speed.json").read_text())
        assert saved["steps"] == 3 and saved["steps_per_s"] > 0
        assert 0 < saved["validation_seconds"] < saved["seconds"]  # validation ran once, timed apart
    finally:
        torch.set_num_threads(before)
