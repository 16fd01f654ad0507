"""The ablation: train each temporal-mixing variant on the toy world, sample, score, write a table.

    python -m ls_video.commands.ablation -c configs/ablation/toy.yaml [--only none,shift] [--sweep] [--max-steps N]

For every variant (and with ``--sweep`` the shift-fraction / placement sweep) it runs ``ls-video fit -c
<train_config> <overrides>`` (a child ``python -m ls_video.cli``: any folder, the wheel too) into
``<out>/<variant>`` (skipped when that run already reached the step budget, so an interrupted ablation
continues), samples the 32 toy prompts x ``seeds`` seeds from the EMA weights, and scores them
(``ls_video.metrics.toy``). Train-step and
sampling times are measured side by side in one process (variants alternating) as ratios to
``none``. Results go to ``<out>/results.json`` and the table between the ablation markers of
``<results>`` (docs/RESULTS.md), with the command line. Optional keys: ``num_frames`` (default 6),
``marker`` (the results block's name, default ``ablation``: another study keeps its own block),
``long_range: true`` (adds the long-range metrics of :func:`ls_video.metrics.toy.score_long`) and
``reach: true`` (prints the shift's temporal reach for the trained U-Net and SD-1.5). Each variant's
scores are kept in ``<out>/<variant>/scores.json``, so a rerun after an interruption only times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch
import yaml

from ls_video.checkpoint import load_checkpoint, temporal_config_from_hparams
from ls_video.errors import UsageError, command
from ls_video.objective import ObjectiveConfig
from ls_video.temporal_layers import added_parameters
from ls_video.toy.curve import evaluate_checkpoint

START, END = "<!-- ablation:start -->", "<!-- ablation:end -->"


def markers(name: str = "ablation") -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def temporal_reach(unet: torch.nn.Module) -> dict[str, int]:
    """ResNet blocks (each shifts one frame each way) on the U-Net's longest path, per part: a frame's
    features reach ``total`` frames each way in one U-Net pass (the shortest path, through the first skip
    connection, crosses one block)."""
    from diffusers.models.resnet import ResnetBlock2D

    def count(blocks: torch.nn.Module) -> int:
        return sum(isinstance(m, ResnetBlock2D) for m in blocks.modules())

    out = dict(down=count(unet.down_blocks), mid=count(unet.mid_block), up=count(unet.up_blocks))
    return {**out, "total": sum(out.values())}


def reach_table(base: str) -> str:
    """Temporal reach of the shift for the toy base's U-Net and the SD-1.5 U-Net (built on the meta device)."""
    from diffusers import UNet2DConditionModel

    from ls_video.testing.presets import sd15_unet

    with torch.device("meta"):
        nets = {"toy": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(base, subfolder="unet")),
                "SD-1.5": sd15_unet()}
    lines = ["| U-Net | shifted blocks: down | mid | up | reach (frames each way, one pass) |", "|---|---|---|---|---|"]
    for name, net in nets.items():
        r = temporal_reach(net)
        lines.append(f"| {name} | {r['down']} | {r['mid']} | {r['up']} | {r['total']} |")
    return "\n".join(lines)


def train(name: str, overrides: list[str], cfg: dict, steps: int) -> str:
    """Train one variant (or reuse a finished run); returns its last checkpoint."""
    run = os.path.join(cfg["out"], name)
    last = os.path.join(run, "checkpoints", "last.ckpt")
    if os.path.isfile(last) and load_checkpoint(last).get("global_step", 0) >= steps:
        print(f"[ablation] {name}: reusing {last}", flush=True)
        return last
    cmd = [sys.executable, "-m", "ls_video.cli", "fit", "-c", cfg["train_config"], "--trainer.max_steps", str(steps),
           "--trainer.default_root_dir", run, "--trainer.logger.init_args.save_dir", run,
           *map(str, cfg.get("shared", [])), *map(str, overrides)]
    if os.path.isfile(last):
        cmd += ["--ckpt_path", last]
    print(f"[ablation] {name}: {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    print(f"[ablation] {name}: trained in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    return last


def toy_fvd(videos: list, toy_net: str) -> float:
    """FVD of the samples against as many rendered toy-world validation clips (toy feature net)."""
    from ls_video.commands.eval import load_reference
    from ls_video.metrics.features import Extractor
    from ls_video.metrics.frechet import frechet_distance_of

    real, _ = load_reference("toy", videos, len(videos))
    ex = Extractor(toy_net)
    return frechet_distance_of(ex.video_features(videos), ex.video_features(real))


def side_by_side_times(ckpts: dict[str, str], reps: int, frames: int = 6) -> dict[str, dict]:
    """Median train-step and sampling seconds per variant, variants alternating in this process."""
    from ls_video.checkpoint import pipeline_from_checkpoint
    from ls_video.module import LatentShiftModule
    from ls_video.testing.timing import alternate

    modules, pipes = {}, {}
    for name, path in ckpts.items():
        checkpoint = load_checkpoint(path)
        hp = checkpoint["hyper_parameters"]
        config = temporal_config_from_hparams(hp)
        modules[name] = LatentShiftModule(hp["pretrained_model_name_or_path"], temporal=config,
                                          objective=ObjectiveConfig(caption_dropout=0.0))
        pipes[name] = pipeline_from_checkpoint(checkpoint)
        pipes[name].set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    batch = {"latents": torch.randn(16, frames, 4, 8, 8, generator=g), "captions": ["a red square moving left"] * 16}

    def train_step(name):
        def setup():
            m = modules[name]
            m.unet.zero_grad(set_to_none=True)
            return lambda: m.diffusion_loss(batch["latents"], m.text_embeddings(batch)).backward()
        return setup

    def sample(name):
        def setup():
            return lambda: pipes[name](["a red square moving left"] * 4, num_frames=frames, num_inference_steps=25,
                                       guidance_scale=4.0, generator=torch.Generator().manual_seed(0))
        return setup

    train_s = alternate({n: train_step(n) for n in ckpts}, reps, "cpu")
    sample_s = alternate({n: sample(n) for n in ckpts}, max(1, reps // 2), "cpu")
    return {n: dict(train_step_s=train_s[n], sample_s=sample_s[n], added_params=added_parameters(pipes[n].unet))
            for n in ckpts}


def table(rows: dict[str, dict]) -> str:
    ref = rows.get("none")
    lines = ["| variant | added params | train step (x none) | sampling (x none) | direction | steps right | "
             "colour | shape | consistency | toy FVD |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        tr = f"{r['train_step_s'] / ref['train_step_s']:.2f}" if ref else "-"
        sr = f"{r['sample_s'] / ref['sample_s']:.2f}" if ref else "-"
        fvd = f"{r['toy_fvd']:.1f}" if "toy_fvd" in r else "-"
        lines.append(f"| {name} | {r['added_params']:,} | {tr} | {sr} | {r['direction_acc']:.2f} | {r['step_acc']:.2f} "
                     f"| {r['color_acc']:.2f} | {r['shape_acc']:.2f} | {r['consistency']:.2f} | {fvd} |")
    return "\n".join(lines)


LONG = ("identity", "constant", "direction_all", "direction_late", "single")


def long_table(rows: dict[str, dict]) -> str:
    """The long-range columns (:func:`ls_video.metrics.toy.score_long`) beside cost, as ratios to ``none``."""
    ref = rows.get("none")
    lines = ["| variant | added params | train step (x none) | sampling (x none) | identity held | constant velocity "
             "| median spread | direction (clip) | direction (2nd half) | single object | colour | shape |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        tr = f"{r['train_step_s'] / ref['train_step_s']:.2f}" if ref and "train_step_s" in r else "-"
        sr = f"{r['sample_s'] / ref['sample_s']:.2f}" if ref and "sample_s" in r else "-"
        params = f"{r['added_params']:,}" if "added_params" in r else "-"
        cols = " | ".join(f"{r[k]:.2f}" for k in LONG[:2])
        lines.append(f"| {name} | {params} | {tr} | {sr} | {cols} | {r['spread']:.2f} | {r['direction_all']:.2f} | "
                     f"{r['direction_late']:.2f} | {r['single']:.2f} | {r['color_acc']:.2f} | {r['shape_acc']:.2f} |")
    return "\n".join(lines)


def write_results(path: str, text: str, marker: str = "ablation") -> None:
    """Replace the text between the ``marker`` markers of ``path`` (appending them when absent)."""
    START, END = markers(marker)  # noqa: N806
    doc = open(path).read() if os.path.isfile(path) else "# Results\n"
    if START in doc and END in doc:
        doc = doc[: doc.index(START)] + text + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    with open(path, "w") as f:
        f.write(doc)


def score_variant(name: str, path: str, cfg: dict, steps: int, seeds: int, frames: int) -> dict:
    """Toy scores of a variant's checkpoint (cached in ``OUT/NAME/scores.json`` for that many steps)."""
    cache = os.path.join(cfg["out"], name, "scores.json")
    if os.path.isfile(cache) and json.load(open(cache)).get("step") == steps:
        return json.load(open(cache))
    r = evaluate_checkpoint(path, seeds, 25, frames, 4.0, return_videos=True)
    videos = r.pop("videos")
    r.pop("rows", None)
    if cfg.get("toy_net"):
        r["toy_fvd"] = toy_fvd(videos, cfg["toy_net"])
    if cfg.get("long_range"):
        from ls_video.metrics.toy import score_long
        from ls_video.toy.world import all_prompts

        r.update(score_long(videos, [p for p in all_prompts() for _ in range(seeds)]))
    with open(cache, "w") as f:
        json.dump(r, f, indent=2)
    print(f"[ablation] {name}: {json.dumps(r)}", flush=True)
    return r


@command("ls-video ablation")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ls-video ablation", description=__doc__.split("\n")[0])
    p.add_argument("-c", "--config", required=True, help="ablation YAML (e.g. configs/ablation/toy.yaml)")
    p.add_argument("--only", help="comma-separated variant names (default: all `variants`)")
    p.add_argument("--sweep", action="store_true", help="also run the `sweep` entries (shift fraction, placement)")
    p.add_argument("--max-steps", type=int, help="override the training steps of every variant")
    p.add_argument("--num-videos-per-prompt", type=int, help="override videos (seeds) per prompt")
    args = p.parse_args(argv)
    with open(args.config) as f:
        cfg = yaml.safe_load(f)
    steps, seeds = args.max_steps or cfg["steps"], args.num_videos_per_prompt or cfg["seeds"]
    variants = dict(cfg["variants"])
    if args.sweep:
        variants.update(cfg.get("sweep", {}))
    if args.only:
        unknown = set(args.only.split(",")) - set(variants)
        if unknown:
            raise UsageError(f"unknown variants {sorted(unknown)}; known: {sorted(variants)}")
        variants = {k: v for k, v in variants.items() if k in args.only.split(",")}
    toy_net = cfg.get("toy_net")
    if toy_net and not os.path.isfile(os.path.join(toy_net, "model.safetensors")):
        from ls_video.metrics.toy_net import train_toy_net

        print(f"[ablation] training the toy FVD feature net into {toy_net}", flush=True)
        train_toy_net(toy_net, steps=cfg.get("toy_net_steps", 400))
    rows, ckpts = {}, {}
    frames = cfg.get("num_frames", 6)
    for name, overrides in variants.items():  # each variant is scored as soon as it is trained
        ckpts[name] = train(name, overrides, cfg, steps)
        rows[name] = score_variant(name, ckpts[name], cfg, steps, seeds, frames)
    for name, t in side_by_side_times(ckpts, cfg.get("timing_reps", 5), frames).items():
        rows[name].update(t)
    os.makedirs(cfg["out"], exist_ok=True)
    with open(os.path.join(cfg["out"], "results.json"), "w") as f:
        json.dump(rows, f, indent=2)
    command = "ls-video ablation " + " ".join(argv if argv is not None else sys.argv[1:])
    start, end = markers(cfg.get("marker", "ablation"))
    body = long_table(rows) if cfg.get("long_range") else table(rows)
    if cfg.get("reach"):
        body += "\n\nTemporal reach of the shift:\n\n" + reach_table(load_checkpoint(next(iter(ckpts.values())))
                                                                     ["hyper_parameters"]["pretrained_model_name_or_path"])
    text = (f"{start}\n`{command}` ({steps} steps each, {frames} frames, 32 prompts x {seeds} seeds, EMA weights, 25 "
            f"DDIM steps, guidance 4; times on this machine, variants alternating in one process):\n\n{body}\n{end}")
    write_results(cfg["results"], text, cfg.get("marker", "ablation"))
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
