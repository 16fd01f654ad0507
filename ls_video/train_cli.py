"""``ls-video fit | validate``: a ``LightningCLI`` over ``LatentShiftModule`` and any datamodule.

    ls-video fit -c configs/toy.yaml                 (or: python train.py fit -c configs/toy.yaml)
    ls-video fit -c configs/toy.yaml --ckpt_path last
    ls-video fit --model.pretrained_model_name_or_path BASE \
        --data.class_path ls_video.datamodules.LatentVideoDataModule --data.init_args.train_urls SHARDS \
        --trainer.max_steps 1000

Checkpoints go to ``{default_root_dir}/checkpoints`` (``last.ckpt`` kept), so ``--ckpt_path last``
finds the newest one with or without a config file. Shipped configs and the toy base are found from any
folder, also from an installed wheel: ``-c configs/toy.yaml`` or ``-c toy`` (:mod:`ls_video.shipped`).
"""

from __future__ import annotations

import os

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from ls_video.callbacks.preemption import Preemption
from ls_video.checkpoint_io import AtomicCheckpointIO
from ls_video.module import LatentShiftModule
from ls_video.run_lock import acquire, is_first_process, release
from ls_video.shipped import shipped_path
from ls_video.trainer_options import check_precision_request, check_trainer

# Lightning's test / predict need a test_step / predict_step, which this module does not have (sampling is
# `ls-video sample`); the CLI offers only what works.
SUBCOMMANDS = {"fit": "train (and resume: --ckpt_path last)", "validate": "validation loss of a model or checkpoint"}


class LatentShiftCLI(LightningCLI):
    """LightningCLI with a checkpoint callback (``--checkpoint.*``) and preemption handling
    (``--preemption.*``: SIGTERM / SIGUSR1 -> ``last.ckpt`` at the next step and a non-zero exit)."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {name: LightningCLI.subcommands()[name] for name in SUBCOMMANDS}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(Preemption, "preemption")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 1,
                             "checkpoint.every_n_train_steps": 500, "checkpoint.filename": "step{step:07d}",
                             "checkpoint.auto_insert_metric_name": False})

    def instantiate_trainer(self, **kwargs):
        """Checkpoints are written atomically unless the config names its own checkpoint IO."""
        plugins = self._get(self.config_init, "trainer", default={}).get("plugins")
        if not plugins:
            kwargs.setdefault("plugins", [AtomicCheckpointIO()])
        trainer = super().instantiate_trainer(**kwargs)
        check_trainer(trainer)  # before any process is launched (docs/TRAINING.md, "Trainer options")
        return trainer

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        if config.get("trainer") is not None:  # (as written: Lightning turns 16-mixed on a CPU into bf16-mixed)
            check_precision_request(config.trainer.get("precision"), config.trainer.get("accelerator"))
        if config.get("model") is not None and config.model.get("pretrained_model_name_or_path"):
            base = config.model.pretrained_model_name_or_path  # assets/toy-base also from an installed wheel
            config.model.pretrained_model_name_or_path = shipped_path(base)
        if config.get("checkpoint") is not None and config.checkpoint.get("dirpath") is None:
            root = config.trainer.get("default_root_dir") or os.getcwd()
            config.checkpoint.dirpath = os.path.join(root, "checkpoints")
        if self.subcommand == "fit" and is_first_process():  # one live run per run folder (before the model loads)
            self._lock = acquire(config.trainer.get("default_root_dir") or os.getcwd())

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        finally:
            if getattr(self, "_lock", None):
                release(self._lock)


def build(args: list[str] | None = None) -> LatentShiftCLI:
    """Parse ``args``, build the model, data and trainer, and run the subcommand."""
    return LatentShiftCLI(
        LatentShiftModule,
        L.LightningDataModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"exit_on_error": False},
        args=args,
        auto_configure_optimizers=False,
    )
