"""Motion as a file: what video fine-tuning changed in a U-Net, carried onto another fine-tune of its base.

    python -m ls_video.commands.transfer extract --video VIDEO_MODEL --base BASE --out motion.safetensors [--rank R]
    python -m ls_video.commands.transfer apply --motion motion.safetensors --target OTHER_MODEL --out OUT [--scale S]

(also ``ls-video transfer extract|apply ...``). Latent-Shift adds no layers, so its "motion" is the
weight delta ``video U-Net - base U-Net``. ``extract`` stores it whole (float32) or, with ``--rank``,
every 2-D/4-D weight's delta as a rank-``R`` product ``up @ down`` (truncated SVD of the delta
reshaped to ``(out, in*kh*kw)``; LoRA-style), plus the temporal settings and the architecture it
fits. ``apply`` adds ``scale * delta`` to another model of the same architecture (e.g. a
DreamBooth/LoRA fine-tune of the same base) and writes a diffusers folder with the shift settings,
which ``sample.py``, the pipeline and training load like any export.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict

import torch
from safetensors.torch import load_file, save_file

from ls_video.components import load_unet, unet_folder
from ls_video.errors import UsageError, command
from ls_video.hub import resolve
from ls_video.unet import TemporalConfig

FORMAT = "ls-video-motion/1"
MOTION_ADAPTER_SD15_PARAMS = 453_000_000  # diffusers' AnimateDiff MotionAdapter for SD-1.5 (v1.5)


def architecture(unet: torch.nn.Module) -> dict[str, list[int]]:
    """Parameter name -> shape: what a delta must match to be added."""
    return {k: list(v.shape) for k, v in unet.state_dict().items()}


def check_same_architecture(expected: dict[str, list[int]], unet: torch.nn.Module, what: str) -> None:
    actual = architecture(unet)
    if actual == expected:
        return
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    wrong = [k for k in expected if k in actual and expected[k] != actual[k]]
    first = (f"{wrong[0]} is {actual[wrong[0]]}, the motion's is {expected[wrong[0]]}" if wrong else
             f"{len(missing)} parameters missing (e.g. {missing[0]})" if missing else
             f"{len(extra)} extra parameters (e.g. {extra[0]})")
    raise UsageError(f"{what} has another U-Net architecture than the motion file: {first}")


def low_rank(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(up, down)`` with ``up @ down`` the best rank-``rank`` approximation of ``delta`` as a matrix."""
    matrix = delta.reshape(delta.shape[0], -1).double()
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    r = min(rank, s.numel())
    return (u[:, :r] * s[:r]).float().contiguous(), vh[:r].float().contiguous()


def extract(video: str, base: str, out: str, rank: int | None = None) -> dict:
    """Write the motion file; returns a report (parameters stored, sizes)."""
    if rank is not None and rank < 1:
        raise UsageError(f"--rank must be >= 1, got {rank}")
    video_unet, base_unet = load_unet(video), load_unet(base)
    config = TemporalConfig.load(unet_folder(resolve(video, what="model"))) or TemporalConfig()
    if config.temporal_mixing not in ("shift", "none"):
        raise UsageError(f"{video} uses temporal_mixing={config.temporal_mixing!r}: motion transfer carries weight "
                         "deltas of the same layers (shift or none), not added layers")
    arch = architecture(base_unet)
    check_same_architecture(arch, video_unet, video)
    base_state = base_unet.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for name, weight in video_unet.state_dict().items():
        delta = weight.double() - base_state[name].double()
        if not delta.any():
            continue
        factorise = rank is not None and delta.ndim >= 2 and rank * (delta.shape[0] + delta[0].numel()) < delta.numel()
        if factorise:
            tensors[f"{name}.up"], tensors[f"{name}.down"] = low_rank(delta, rank)
        else:
            tensors[f"{name}.delta"] = delta.float()
    metadata = {"format": FORMAT, "temporal_config": json.dumps(asdict(config)), "architecture": json.dumps(arch),
                "rank": str(rank or 0), "unet_config": json.dumps(dict(base_unet.config), default=str)}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_file(tensors, out, metadata=metadata)
    stored = sum(t.numel() for t in tensors.values())
    unet_params = sum(p.numel() for p in base_unet.parameters())
    return {"stored_parameters": stored, "unet_parameters": unet_params, "file_bytes": os.path.getsize(out),
            "vs_unet": stored / unet_params, "vs_motion_adapter_sd15": stored / MOTION_ADAPTER_SD15_PARAMS,
            "changed_tensors": len({k.rsplit(".", 1)[0] for k in tensors}), "rank": rank}


def read_motion(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a motion file (safetensors: nothing is unpickled)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"motion file not found: {path}")
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise UsageError(f"{path} is not a motion file written by `ls-video transfer extract`")
    return load_file(path), metadata


def deltas(tensors: dict[str, torch.Tensor], shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Parameter name -> full delta (low-rank pairs multiplied out)."""
    out = {}
    for key, value in tensors.items():
        name, kind = key.rsplit(".", 1)
        if kind == "delta":
            out[name] = value
        elif kind == "up":
            out[name] = (value @ tensors[f"{name}.down"]).reshape(shapes[name])
    return out


def apply(motion: str, target: str, out: str, scale: float = 1.0, include: str | None = None) -> int:
    """Write ``target`` + ``scale`` x motion as a diffusers folder with the shift settings; returns tensors changed.

    ``include``: a regular expression; only parameters whose name it finds (``re.search``) get their delta
    (to study which layers carry the motion). ``scale=0`` gives the target with the shift switched on and
    its own weights.
    """
    import re

    from ls_video.pipeline import LatentShiftPipeline

    tensors, metadata = read_motion(motion)
    shapes = json.loads(metadata["architecture"])
    if not os.path.isfile(os.path.join(target, "model_index.json")):
        raise FileNotFoundError(f"{target} is not a diffusers pipeline folder (no model_index.json)")
    temporal = TemporalConfig(**json.loads(metadata["temporal_config"]))
    pipe = LatentShiftPipeline.from_pretrained(target, temporal=temporal)
    check_same_architecture(shapes, pipe.unet, target)
    state = pipe.unet.state_dict()
    with torch.no_grad():
        changed = deltas(tensors, shapes)
        if include is not None:
            changed = {k: v for k, v in changed.items() if re.search(include, k)}
        for name, delta in changed.items():
            weight = state[name]
            weight.copy_((weight.double() + scale * delta.double()).to(weight.dtype))
    pipe.save_pretrained(out)
    return len(changed)


@command("ls-video transfer")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ls-video transfer", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("extract", help="video U-Net minus base U-Net -> motion.safetensors")
    e.add_argument("--video", required=True, help="the video model (exported folder, or its unet/ folder)")
    e.add_argument("--base", required=True, help="the image model it was fine-tuned from")
    e.add_argument("--out", required=True, help="motion file to write (.safetensors)")
    e.add_argument("--rank", type=int, default=None, help="store each weight's delta at this rank (default: whole)")
    a = sub.add_parser("apply", help="another fine-tune of the base + motion -> a video model folder")
    a.add_argument("--motion", required=True, help="motion file from `extract`")
    a.add_argument("--target", required=True, help="diffusers folder of a model with the base's architecture")
    a.add_argument("--out", required=True, help="output diffusers folder")
    a.add_argument("--scale", type=float, default=1.0, help="multiply the motion delta (default 1)")
    a.add_argument("--include", default=None,
                   help="regular expression: only U-Net parameters whose name matches get the delta")
    args = p.parse_args(argv)
    if args.command == "extract":
        r = extract(args.video, args.base, args.out, args.rank)
        print(f"wrote {args.out}: {r['stored_parameters']:,} numbers for {r['changed_tensors']} tensors "
              f"({r['file_bytes'] / 2**20:.1f} MiB; {r['vs_unet']:.1%} of the U-Net's "
              f"{r['unet_parameters']:,} parameters; {r['vs_motion_adapter_sd15']:.1%} of SD-1.5's MotionAdapter)")
    else:
        n = apply(args.motion, args.target, args.out, args.scale, args.include)
        print(f"wrote {args.out}: {n} tensors moved by the motion (scale {args.scale:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
