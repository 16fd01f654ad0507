"""The training command line: a ``LightningCLI`` over ``LatentShiftModule`` and any datamodule.

    python train.py fit -c configs/toy.yaml          (or: ls-video fit -c configs/toy.yaml)
    python train.py fit -c configs/toy.yaml --ckpt_path last
    python train.py fit --model.pretrained_model_name_or_path BASE \
        --data.class_path datamodules.LatentVideoDataModule --data.init_args.train_urls SHARDS \
        --trainer.max_steps 1000

Checkpoints go to ``{default_root_dir}/checkpoints`` (``last.ckpt`` kept), so ``--ckpt_path last``
finds the newest one with or without a config file.
"""

from __future__ import annotations

import os
import sys
from argparse import ArgumentError

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from ls_video.checkpoint_io import AtomicCheckpointIO
from ls_video.module import LatentShiftModule
from ls_video.quiet import quiet


class LatentShiftCLI(LightningCLI):
    """LightningCLI with a checkpoint callback configurable as ``--checkpoint.*``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 1,
                             "checkpoint.every_n_train_steps": 500, "checkpoint.filename": "step{step:07d}",
                             "checkpoint.auto_insert_metric_name": False})

    def instantiate_trainer(self, **kwargs):
        """Checkpoints are written atomically unless the config names its own checkpoint IO."""
        plugins = self._get(self.config_init, "trainer", default={}).get("plugins")
        if not plugins:
            kwargs.setdefault("plugins", [AtomicCheckpointIO()])
        return super().instantiate_trainer(**kwargs)

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        if config.get("checkpoint") is not None and config.checkpoint.get("dirpath") is None:
            root = config.trainer.get("default_root_dir") or os.getcwd()
            config.checkpoint.dirpath = os.path.join(root, "checkpoints")


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


def main(args: list[str] | None = None) -> int:
    """Entry point of ``train.py`` and the ``ls-video`` console script: expected failures (missing files,
    bad values, unsafe or mostly-bad data, diverging loss) end with a one-line error and exit code 2."""
    from callbacks.data_health import BadDataError

    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["transfer"]:  # ls-video transfer extract|apply ... (motion as a file)
        from ls_video.transfer import main as transfer_main

        return transfer_main(argv[1:])
    quiet()
    try:
        build(args)
    except (FileNotFoundError, ValueError, BadDataError, FloatingPointError, ArgumentError) as err:
        if isinstance(err, ArgumentError):
            message = " ".join(line.strip() for line in str(err).strip().splitlines() if line.strip())
            print(f"train.py: error: {message[:400]} (see --help)", file=sys.stderr)
            return 2
        print(f"train.py: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
