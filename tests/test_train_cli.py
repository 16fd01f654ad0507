import dataclasses
import glob
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import UNet2DConditionModel

from ls_video.checkpoint import EMA_KEY
from ls_video.lora import LoraSettings
from ls_video.module import LatentShiftModule
from ls_video.objective import ObjectiveConfig
from ls_video.optim import OptimConfig
from ls_video.train_cli import LatentShiftCLI
from ls_video.unet import TemporalConfig, get_temporal_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


class BuildAllButTheTrainer(LatentShiftCLI):
    """Parse and instantiate every class of a config (model, data, callbacks, logger, strategy); the Trainer
    itself is left out (its accelerator and devices are those of the cluster the config is for)."""

    def instantiate_trainer(self, **kwargs):
        return self._get(self.config_init, "trainer")

    def _run_subcommand(self, subcommand: str) -> None:
        pass


def build(base: str, tmp_path: Path, *args: str) -> BuildAllButTheTrainer:
    """The shipped config(s) ``args`` built with the tiny base in place of theirs (no download)."""
    cwd = os.getcwd()
    os.chdir(tmp_path)  # relative output folders land here
    try:
        return BuildAllButTheTrainer(LatentShiftModule, __import__("lightning").LightningDataModule,
                                     subclass_mode_data=True, auto_configure_optimizers=False,
                                     args=["fit", *args, "--model.pretrained_model_name_or_path", base])
    finally:
        os.chdir(cwd)


def class_of(spec: dict) -> type:
    module, name = spec["class_path"].rsplit(".", 1)
    return getattr(__import__(module, fromlist=[name]), name)


OVERLAYS = {"sd21-base.yaml": "sd15.yaml", "lora.yaml": "toy.yaml"}  # overlay: the config it is used after


@pytest.mark.parametrize("path", sorted(glob.glob(str(CONFIGS / "*.yaml"))), ids=os.path.basename)
def test_every_config_builds(path, tiny_base, tmp_path):
    """Fails if a shipped config names a class or argument that no longer exists, or a value that only the
    class rejects (``JointImageVideo`` mode or ratio, EMA decay, an ``OptimConfig`` schedule, a
    ``TemporalConfig`` mixing) - parsing alone lets those through - or if the model ignores its config groups."""
    under = OVERLAYS.get(os.path.basename(path))
    files = [str(CONFIGS / under), path] if under else [path]
    cli = build(tiny_base, tmp_path, *[a for f in files for a in ("-c", f)])
    merged: dict = {}
    for f in files:
        for key, value in yaml.safe_load(open(f)).items():
            merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    trainer, model = cli.trainer, cli.model
    callbacks = merged["trainer"]["callbacks"]
    assert [type(cb) for cb in trainer.callbacks] == [class_of(spec) for spec in callbacks]
    assert isinstance(cli.datamodule, class_of(merged["data"]))
    assert get_temporal_config(model.unet) == TemporalConfig(**merged["model"]["temporal"])
    assert model.optim_config == OptimConfig(**{**dataclasses.asdict(OptimConfig()), **merged["model"]["optim"]})
    assert model.objective.config == ObjectiveConfig(**merged["model"].get("objective", {}))
    assert trainer.logger.save_dir == merged["trainer"]["logger"]["init_args"]["save_dir"]
    assert model.hparams["lora"] == dataclasses.asdict(LoraSettings(**merged["model"].get("lora", {})))


@pytest.mark.parametrize("path", sorted(glob.glob(str(CONFIGS / "data" / "*.yaml"))), ids=os.path.basename)
def test_data_fragments_swap_in(path, tiny_base, tmp_path):
    """Fails if a data fragment's class or arguments no longer build (``--data FILE`` after ``toy.yaml``)."""
    cli = build(tiny_base, tmp_path, "-c", str(CONFIGS / "toy.yaml"), "--data", path)
    spec = yaml.safe_load(open(path))
    assert isinstance(cli.datamodule, class_of(spec)) and cli.datamodule.batch_size == spec["init_args"]["batch_size"]


@pytest.mark.parametrize("path", sorted(glob.glob(str(CONFIGS / "strategy" / "*.yaml"))), ids=os.path.basename)
def test_strategy_overlays_build(path, tiny_base, tmp_path):
    """Fails if a strategy overlay's class or arguments no longer build on top of ``sd15.yaml`` (both overlays
    run for real in tests/test_launch.py)."""
    cli = build(tiny_base, tmp_path, "-c", str(CONFIGS / "sd15.yaml"), "-c", path)
    assert isinstance(cli.trainer.strategy, class_of(yaml.safe_load(open(path))["trainer"]["strategy"]))


def write_config(tmp_path: Path, base: str, **trainer) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 3, "default_root_dir": str(tmp_path / "run"),
                    "logger": False, "enable_progress_bar": False, "num_sanity_val_steps": 0,
                    "limit_val_batches": 1, "val_check_interval": 2, "check_val_every_n_epoch": None,
                    "callbacks": [{"class_path": "ls_video.callbacks.EMA", "init_args": {"decay": 0.9}}], **trainer},
        "checkpoint": {"every_n_train_steps": 1},
        "model": {"pretrained_model_name_or_path": base, "optim": {"warmup_steps": 0, "learning_rate": 1e-3}},
        "data": {"class_path": "ls_video.datamodules.ToyDataModule",
                 "init_args": {"cache_dir": str(tmp_path / "cache"), "num_train_clips": 8,  # base: the model's
                               "num_val_clips": 2, "world": {"size": 16, "num_frames": 4, "object_size": 4},
                               "batch_size": 2, "num_workers": 0, "shard_size": 4}},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def last_ckpt(tmp_path: Path) -> dict:
    return torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.slow
def test_fit_resume_export_and_sample(tiny_base, tmp_path):
    config = write_config(tmp_path, tiny_base)
    r = train("fit", "-c", str(config))
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = last_ckpt(tmp_path)
    assert ckpt["global_step"] == 3 and ckpt["callbacks"]["EMA"]["num_updates"] == 3
    assert not any(k.startswith(("vae.", "text_encoder.")) for k in ckpt["state_dict"])
    ema_at_3 = ckpt[EMA_KEY]

    r = train("fit", "-c", str(config), "--trainer.max_steps", "5", "--ckpt_path", "last")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "EMA: resumed after 3 updates" in r.stderr + r.stdout
    ckpt = last_ckpt(tmp_path)
    assert ckpt["global_step"] == 5 and ckpt["callbacks"]["EMA"]["num_updates"] == 5
    assert any(not torch.equal(ema_at_3[k], ckpt[EMA_KEY][k]) for k in ema_at_3)

    r = train("validate", "-c", str(config), "--ckpt_path", "last")
    assert r.returncode == 0 and "val/loss" in r.stdout, r.stderr[-2000:]

    out = tmp_path / "exported"
    r = subprocess.run([sys.executable, "-m", "ls_video.commands.export", str(tmp_path / "run/checkpoints/last.ckpt"),
                        str(out)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "EMA" in r.stdout, r.stderr
    unet, info = UNet2DConditionModel.from_pretrained(out / "unet", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ema = ckpt[EMA_KEY]
    assert all(torch.equal(unet.state_dict()[k], ema[k]) for k in ema)
    assert json.loads((out / "unet" / "latent_shift.json").read_text())["temporal_mixing"] == "shift"

    r = subprocess.run([sys.executable, "sample.py", "--model", str(out), "--prompt", "a red square moving left",
                        "--num-frames", "4", "--num-inference-steps", "2", "--out", str(tmp_path / "s")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "sample.py", "--model", str(tmp_path / "run/checkpoints/last.ckpt"),
                        "--ema", "--prompt", "a red square", "--num-frames", "2", "--num-inference-steps", "1", "--out",
                        str(tmp_path / "s2")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_no_config_file_and_last_with_defaults(tiny_base, tmp_path):
    write_config(tmp_path, tiny_base)  # only to build the toy shards
    from ls_video.datamodules import ToyDataModule
    from ls_video.toy.world import ToyWorld

    dm = ToyDataModule(tiny_base, cache_dir=str(tmp_path / "cache"), num_train_clips=4, num_val_clips=0,
                       world=ToyWorld(size=16, num_frames=4, object_size=4), shard_size=4)
    dm.prepare_data()
    shards = os.path.join(dm.shard_dir("train"), "shard-000000.tar")
    args = ["fit", "--model.pretrained_model_name_or_path", tiny_base,
            "--data.class_path", "ls_video.datamodules.LatentVideoDataModule", "--data.init_args.train_urls", shards,
            "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "2",
            "--trainer.max_steps", "2", "--trainer.accelerator", "cpu", "--trainer.logger", "false",
            "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false"]
    r = train(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    r = train(*args[:-6], "--trainer.max_steps", "3", *args[-4:], "--ckpt_path", "last")
    assert r.returncode == 0, r.stderr[-3000:]
    assert last_ckpt(tmp_path)["global_step"] == 3


@pytest.mark.slow
def test_ddp_two_cpu_processes_read_disjoint_shards(tiny_base, tmp_path):
    """``resampled: false`` under DDP: in an epoch each rank reads its own shards (docs/DATA.md), together all.
    Fails if ranks read the same shards or share a single sample (``keys[0] != keys[1]``, the check this
    replaces, passed as soon as one key differed)."""
    config = write_config(tmp_path, tiny_base, devices=2, strategy="ddp", max_steps=3)
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["init_args"]["resampled"] = False  # 8 clips in 2 shards of 4: one shard per rank
    cfg["trainer"]["callbacks"].append({"class_path": "record_keys.RecordKeys",
                                        "init_args": {"out": str(tmp_path / "keys")}})
    config.write_text(yaml.safe_dump(cfg))
    env = {"PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = train("fit", "-c", str(config), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    keys = [json.loads((tmp_path / "keys" / f"rank{i}.json").read_text()) for i in range(2)]
    assert len(keys[0]) == len(keys[1]) == 6  # 3 steps of 2 clips: an epoch (a rank's shard of 4) is 2 steps
    first = [set(k[:4]) for k in keys]  # the first epoch (the next one deals the shards anew)
    assert not first[0] & first[1] and len(first[0] | first[1]) == 8


@pytest.mark.slow
def test_ddp_nonfinite_loss_on_one_rank_skips_the_step_on_both(tiny_base, tmp_path):
    """Rank 1's loss is NaN at step 1 only: both ranks skip that update (no optimizer, scheduler or EMA
    step), count it once, finish at the same step with the same weights; no traceback."""
    config = write_config(tmp_path, tiny_base, devices=2, strategy="ddp", max_steps=4)
    cfg = yaml.safe_load(config.read_text())
    cfg["model"]["optim"]["warmup_steps"] = 10  # a moving learning rate shows whether the scheduler stepped
    cfg["trainer"]["callbacks"].append({"class_path": "nonfinite_on_rank.NonFiniteOnRank",
                                        "init_args": {"out": str(tmp_path / "state"), "rank": 1, "step": 1}})
    config.write_text(yaml.safe_dump(cfg))
    env = {"PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = train("fit", "-c", str(config), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    states = [json.loads((tmp_path / "state" / f"rank{i}.json").read_text()) for i in range(2)]
    assert states[0] == states[1]
    state = states[0]
    assert state["global_step"] == 4 and state["nonfinite_steps"] == 1
    assert state["ema_updates"] == 3  # the skipped step is not averaged
    lrs = state["lrs"]  # warmup: lr grows by one notch per real update, not on the skipped one
    assert lrs[1] == lrs[0] and lrs[2] > lrs[1] and lrs[3] > lrs[2]


@pytest.mark.slow
def test_resumed_run_continues_the_data_stream_instead_of_replaying_it(tiny_base, tmp_path):
    """10 steps, then resume to 20: steps 11-20 draw exactly the stream the checkpoint's step seeds (the
    datamodule rebuilt from the same config and loaded with that checkpoint's state gives the same keys), and
    it is not a replay of steps 1-10. Fails if the resumed stream starts over (replays the first draws) or if
    it ignores the checkpoint's state (draws from an unrelated, unreproducible seed)."""
    config = write_config(tmp_path, tiny_base, max_steps=10)
    env = {"PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    runs = {}
    for name, extra in (("first", []), ("resumed", ["--trainer.max_steps", "20", "--ckpt_path", "last"])):
        cfg = yaml.safe_load(config.read_text())
        cfg["trainer"]["callbacks"].append({"class_path": "record_keys.RecordKeys",
                                            "init_args": {"out": str(tmp_path / name)}})
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        r = train("fit", "-c", str(path), *extra, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        runs[name] = json.loads((tmp_path / name / "rank0.json").read_text())
        if name == "first":
            saved = last_ckpt(tmp_path)["ToyDataModule"]  # Lightning keeps a datamodule's state by class name
    assert saved == {"saved_at_step": 10}
    assert last_ckpt(tmp_path)["global_step"] == 20
    assert len(runs["first"]) == len(runs["resumed"]) == 20  # 10 steps of 2 clips each
    assert runs["resumed"] != runs["first"]
    data = yaml.safe_load(config.read_text())["data"]
    dm = class_of(data)(**data["init_args"], base=tiny_base)
    dm.load_state_dict(saved)
    dm.setup("fit")
    expected = [key for batch in itertools.islice(dm.train_dataloader(), 10) for key in batch["keys"]]
    assert runs["resumed"] == expected


def test_help_explains_model_options():
    r = train("fit", "--help")
    assert r.returncode == 0
    for option in ("--model.temporal.temporal_mixing", "--model.objective.caption_dropout",
                   "--model.objective.snr_gamma", "--checkpoint.dirpath"):
        assert option in r.stdout


def test_shards_from_another_vae_stop_before_step_one(tiny_base, tmp_path):
    """Shards recording another VAE: one line, exit code 2, no step; allow_vae_mismatch overrides."""
    import numpy as np
    import webdataset as wds

    from ls_video.components import vae_fingerprint
    from ls_video.datamodules.shards import encode_sample
    from ls_video.testing.tiny import tiny_vae

    torch.manual_seed(123)
    other = tiny_vae()  # same architecture, other weights: only the fingerprint tells them apart
    meta = {"vae": "other-vae", "vae_fingerprint": vae_fingerprint(other), "latent_channels": 4,
            "scaling_factor": float(other.config.scaling_factor)}
    with wds.TarWriter(str(tmp_path / "a.tar")) as w:
        for i in range(4):
            w.write(encode_sample(f"{i:06d}", np.random.randn(2, 4, 8, 8).astype(np.float16), "a red square", meta))
    config = write_config(tmp_path, tiny_base, max_steps=1)
    cfg = yaml.safe_load(config.read_text())
    cfg["data"] = {"class_path": "ls_video.datamodules.LatentVideoDataModule",
                   "init_args": {"train_urls": str(tmp_path / "a.tar"), "batch_size": 2, "num_workers": 0}}
    cfg["trainer"].update(limit_val_batches=0)
    config.write_text(yaml.safe_dump(cfg))
    r = train("fit", "-c", str(config))
    assert r.returncode == 2, r.stderr[-2000:]
    error = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(error) == 1 and "other-vae" in error[0] and "allow_vae_mismatch" in error[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "run" / "checkpoints").exists() or not list((tmp_path / "run" / "checkpoints").iterdir())
    r = train("fit", "-c", str(config), "--data.init_args.allow_vae_mismatch", "true")
    assert r.returncode == 0, r.stderr[-2000:]
