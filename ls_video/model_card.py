"""The model card (``README.md`` with Hub metadata) of an exported Latent-Shift folder.

    ls-video export CKPT OUT                      writes OUT/README.md (recipe; metrics/samples beside OUT)
    python -m ls_video.commands.model_card OUT --ckpt CKPT [--metrics metrics.json] [--samples DIR]   (rewrite it)

The card says what the folder is (base model, shift settings, training recipe), the scores when a
``metrics.json`` is given or lies beside the folder, up to four sample GIFs when sample videos are given
or lie beside it, and how to load and upload it.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any

import yaml

from ls_video.checkpoint import ema_decay, load_checkpoint

METRICS = ("direction_acc", "step_acc", "color_acc", "shape_acc", "image_color_acc", "image_shape_acc",
           "consistency", "clipsim", "fvd", "fid")
TRAINED_SCHEDULER = ("prediction_type", "timestep_spacing", "rescale_betas_zero_snr", "beta_schedule",
                     "num_train_timesteps")  # the noise-schedule entries a card names


def recipe(ckpt: str, checkpoint: dict[str, Any] | None = None) -> dict[str, Any]:
    """Steps, shift, optimiser and data settings of a training checkpoint (``checkpoint``: the file at
    ``ckpt``, when already loaded) and its run's saved config."""
    checkpoint = checkpoint if checkpoint is not None else load_checkpoint(ckpt)
    hp = checkpoint.get("hyper_parameters", {})
    out = {"base_model": hp.get("pretrained_model_name_or_path"), "steps": checkpoint.get("global_step"),
           "temporal": hp.get("temporal"), "learning_rate": (hp.get("optim") or {}).get("learning_rate"),
           "ema_decay": ema_decay(checkpoint)}
    run_root = os.path.dirname(os.path.dirname(os.path.abspath(ckpt)))
    configs = sorted(glob.glob(os.path.join(run_root, "**", "config.yaml"), recursive=True), key=os.path.getmtime)
    if configs:
        with open(configs[-1]) as f:
            data = ((yaml.safe_load(f) or {}).get("data") or {})
        args = data.get("init_args") or {}
        world = args.get("world") or {}
        out.update(data=data.get("class_path"), batch_size=args.get("batch_size"),
                   frames=args.get("num_frames") or world.get("num_frames"), size=world.get("size"))
    return out


def read_scheduler_config(out: str) -> dict[str, Any]:
    """``out/scheduler/scheduler_config.json`` (empty when absent)."""
    path = os.path.join(out, "scheduler", "scheduler_config.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def sample_gifs(samples: str, out: str, limit: int = 4) -> list[str]:
    """Up to ``limit`` of the sample videos in ``samples`` as GIFs under ``out/samples/`` (relative paths)."""
    from ls_video.video_io import read_video, write_video

    videos = sorted(glob.glob(os.path.join(samples, "*.mp4")))[:limit]
    os.makedirs(os.path.join(out, "samples"), exist_ok=True)
    names = []
    for path in videos:
        name = os.path.join("samples", os.path.splitext(os.path.basename(path))[0] + ".gif")
        frames, fps = read_video(path)
        write_video(os.path.join(out, name), frames, fps=fps)
        names.append(name)
    return names


def render(info: dict[str, Any], metrics: dict | None, gifs: list[str], name: str) -> str:
    base = info.get("base_model") or "unknown"
    meta = {"library_name": "diffusers", "pipeline_tag": "text-to-video", "base_model": base,
            "tags": ["latent-shift", "text-to-video", "diffusers"]}
    temporal = info.get("temporal") or {}
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "", f"# {name}", "",
             f"A text-to-video model made from the text-to-image model `{base}` with Latent-Shift (An et al., "
             "arXiv 2304.08477): the U-Net's ResNet blocks shift part of their channels one frame forward and one "
             "backward in time, so its 2D convolutions learn motion. No parameter is added: `unet/` is a plain "
             "diffusers `UNet2DConditionModel`; the shift settings are in `unet/latent_shift.json`.", "",
             "## Training recipe", "",
             f"- steps: {info.get('steps')}; learning rate {info.get('learning_rate')}",
             f"- temporal mixing: {temporal.get('temporal_mixing')}, shift fraction {temporal.get('shift_fraction')}"
             f" each way, placement {temporal.get('shift_placement')}"]
    scheduler = info.get("scheduler") or {}
    if scheduler:
        trained = ", ".join(f"{k} {scheduler[k]}" for k in TRAINED_SCHEDULER if k in scheduler)
        lines.append(f"- objective: {trained} (`scheduler/` is set for it)")
    if info.get("ema") is not None:
        decay = f" (decay {info['ema_decay']:g})" if info["ema"] and info.get("ema_decay") is not None else ""
        lines.append(f"- weights: {'EMA' + decay if info['ema'] else 'raw (not the EMA average)'}")
    if info.get("data"):
        lines.append(f"- data: `{info['data']}`, batch {info.get('batch_size')}, {info.get('frames')} frames"
                     + (f", {info['size']}x{info['size']} pixels" if info.get("size") else ""))
    if metrics:
        lines += ["", "## Scores", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {metrics[k]:.3f} |" for k in METRICS if isinstance(metrics.get(k), (int, float))]
    if gifs:
        lines += ["", "## Samples", ""] + [f"![{os.path.basename(g)}]({g})" for g in gifs]
    lines += ["", "## Use", "", "```python", "from ls_video.pipeline import LatentShiftPipeline", "",
              'pipe = LatentShiftPipeline.from_pretrained("PATH_OR_REPO")',
              'frames = pipe("a red square moving left", num_frames=16).frames[0]', "```", "",
              "or `ls-video sample --model PATH_OR_REPO --prompt \"...\" --out samples/`. Upload with "
              "`huggingface-cli upload USER/NAME PATH` or `huggingface_hub.upload_folder(folder_path=PATH, "
              "repo_id=\"USER/NAME\")`.", ""]
    return "\n".join(lines)


def write_model_card(out: str, ckpt: str, metrics: str | None = None, samples: str | None = None,
                     checkpoint: dict[str, Any] | None = None, ema: bool | None = None) -> str:
    """Write ``out/README.md``; ``metrics`` / ``samples`` default to what lies beside ``out``
    (``checkpoint``: the file at ``ckpt``, when already loaded; ``ema``: whether ``unet/`` holds its EMA weights).
    The objective is read from ``out/scheduler/`` (what the export wrote, the run's training scheduler)."""
    beside = os.path.dirname(os.path.abspath(out))
    metrics = metrics or next((p for p in (os.path.join(out, "metrics.json"), os.path.join(beside, "metrics.json"))
                               if os.path.isfile(p)), None)
    scores = None
    if metrics:
        with open(metrics) as f:
            scores = json.load(f)
    samples = samples or (beside if glob.glob(os.path.join(beside, "*.mp4")) else None)
    gifs = sample_gifs(samples, out) if samples else []
    path = os.path.join(out, "README.md")
    with open(path, "w") as f:
        info = recipe(ckpt, checkpoint)
        info.update(ema=ema, scheduler=read_scheduler_config(out))
        f.write(render(info, scores, gifs, os.path.basename(os.path.abspath(out))))
    return path

