"""``ls-video``: one command for every step, ``ls-video SUBCOMMAND --help`` for its options.

    ls-video fit -c configs/toy.yaml            train (LightningCLI; also validate)
    ls-video preprocess --videos ... --out ...  videos -> latent shards
    ls-video sample --model M --prompt ...      prompts -> mp4/gif
    ls-video export CKPT OUT                    checkpoint -> diffusers folder
    ls-video eval DIR                           score a sample folder
    ls-video demo                               the toy world end to end (make demo)
    ls-video ablation -c configs/ablation/toy.yaml
    ls-video transfer extract|apply ...         motion as a file
    ls-video make-toy-base --out assets/toy-base
    ls-video app --model M                      a web page: prompt -> video (Gradio)

This file is the application layer: it names each subcommand's module by path and imports it only
when that subcommand runs, so the library below (``ls_video``) never imports ``callbacks`` or
``datamodules``. User mistakes end with one line on stderr and exit code 2, bugs with a traceback;
``ls-video --debug ...`` (or ``LS_VIDEO_DEBUG=1``) shows the traceback of every error (``ls_video.errors``).
"""

from __future__ import annotations

import importlib
import sys

from ls_video.errors import command, take_debug_flag

COMMANDS = {  # name: (module with main(argv), one-line help)
    "preprocess": ("ls_video.datamodules.preprocess", "encode videos into latent shards"),
    "sample": ("ls_video.commands.sample", "turn prompts into videos"),
    "export": ("ls_video.commands.export", "export a checkpoint as a diffusers folder"),
    "eval": ("ls_video.commands.eval", "score a sample folder (motion, CLIP, FVD, FID) and write its gallery"),
    "benchmark": ("ls_video.commands.benchmark", "UCF-101 / MSR-VTT zero-shot protocols (FVD, IS, FID, CLIP)"),
    "demo": ("ls_video.commands.demo", "the toy world end to end: data, training, export, samples, scores"),
    "ablation": ("ls_video.commands.ablation", "train and compare temporal-mixing variants"),
    "transfer": ("ls_video.commands.transfer", "carry motion onto another fine-tune of the base"),
    "make-toy-base": ("ls_video.toy.make_base", "build the toy text-to-image base model"),
    "curve": ("ls_video.toy.curve", "toy accuracy of every checkpoint of a run"),
    "app": ("ls_video.commands.app", "serve a model as a web page (Gradio; the [app] extra)"),
    "toy-videos": ("ls_video.toy.videos", "write toy-world clips with captions (a stand-in for your videos)"),
}


def usage() -> str:
    from ls_video.train_cli import SUBCOMMANDS

    lines = [__doc__.split("\n")[0], "", "--debug: show the traceback of every error", "", "subcommands:"]
    lines += [f"  {name:<14}{text} (Lightning CLI: -c CONFIG, --help)" for name, text in SUBCOMMANDS.items()]
    lines += [f"  {name:<14}{text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


@command("ls-video")
def train_main(argv: list[str] | None = None) -> int:
    """``train.py`` and ``ls-video fit|validate``."""
    from ls_video.quiet import quiet
    from ls_video.shipped import shipped_args
    from ls_video.train_cli import build

    quiet()
    if argv is None:  # LightningCLI reads sys.argv itself (given args, it warns when sys.argv has more)
        sys.argv[1:] = shipped_args(sys.argv[1:])
    build(None if argv is None else shipped_args(argv))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = take_debug_flag(argv)
    args = sys.argv[1:] if argv is None else argv
    name = args[0] if args else None
    if name in COMMANDS:
        module = importlib.import_module(COMMANDS[name][0])
        return module.main(args[1:])
    if name in (None, "-h", "--help") and not args[1:]:
        print(usage())
        return 0 if name else 2
    return train_main(argv)  # None: LightningCLI reads sys.argv itself


if __name__ == "__main__":
    sys.exit(main())
