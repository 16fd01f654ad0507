"""DDP against FSDP2 through the real CLI at SD-1.5 size: steps/s and peak memory of each, side by side.

    python benchmarks/scaleout.py [--size sd15|tiny] [--steps 20] [--frames 16] [--latent 32] [--out DIR]
        [--strategies ddp,fsdp] [--devices 1] [--precision bf16-mixed]

Writes a base folder with random SD-1.5-sized weights (no download) and random latent shards
(16 frames of 32x32 latents = 256x256 videos) once under ``--out``, then runs ``train.py fit -c
configs/sd15.yaml`` (every callback of the shipped config; gradient checkpointing on) for ``--steps``
steps per strategy in its own process, and prints one row per strategy from ``speed.json`` (the
StepSpeed callback): steps/s after the first steps, and the peak GPU memory. ``--size tiny`` runs the same
on a CPU in a minute (the check that the script works; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def prepare(out: Path, size: str, frames: int, latent: int) -> tuple[str, str]:
    """(base folder, shard pattern), written once."""
    from ls_video.components import save_sd_folder
    from ls_video.datamodules.synthetic import write_synthetic_shards
    from ls_video.testing.tiny import tiny_components

    base = out / f"base-{size}"
    if not (base / "model_index.json").exists():
        if size == "sd15":
            from ls_video.testing.presets import sd15_components

            parts = sd15_components()
        else:
            parts = tiny_components()
        save_sd_folder(base, parts)
    shards = out / f"shards-{frames}x{latent}"
    if not (shards / "shard-000003.tar").exists():
        write_synthetic_shards(shards, num_shards=4, per_shard=16, shape=(frames, 4, latent, latent))
    return str(base), str(shards / "shard-{000000..000003}.tar")


def config(out: Path, base: str, shards: str, args: argparse.Namespace, name: str) -> Path:
    cfg = yaml.safe_load((ROOT / "configs" / "sd15.yaml").read_text())
    run_dir = str(out / name)
    cfg["trainer"].update(max_steps=args.steps, devices=args.devices, precision=args.precision,
                          default_root_dir=run_dir, val_check_interval=None, limit_val_batches=0,
                          enable_progress_bar=False, accelerator="auto")
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = run_dir
    cfg["trainer"]["callbacks"].append({"class_path": "ls_video.callbacks.StepSpeed"})
    cfg["checkpoint"] = {"every_n_train_steps": 10**6}
    cfg["model"]["pretrained_model_name_or_path"] = base
    cfg["data"]["init_args"].update(train_urls=shards, val_urls=None, num_workers=2, num_frames=args.frames,
                                    shuffle_buffer=16, allow_vae_mismatch=True)
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=["sd15", "tiny"], default="sd15")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--latent", type=int, default=32, help="latent side (x8 = video side)")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--strategies", default="ddp,fsdp")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp")) / "scaleout")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    base, shards = prepare(args.out, args.size, args.frames, args.latent)
    overlays = {"ddp": ["--trainer.strategy", "ddp"], "fsdp": ["-c", "configs/strategy/fsdp.yaml"]}
    print(f"{'strategy':<8} {'steps/s':>8} {'peak GiB':>9}  ({args.size}, {args.frames}x{args.latent * 8}px, "
          f"{args.precision}, gradient checkpointing, {args.devices} device(s), {args.steps} steps)", flush=True)
    for name in args.strategies.split(","):
        cmd = [sys.executable, "train.py", "fit", "-c", str(config(args.out, base, shards, args, name)),
               *overlays[name]]
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        speed = next((args.out / name).rglob("speed.json"), None)
        if r.returncode or speed is None:
            print(f"{name:<8} failed ({r.returncode}): {r.stderr.strip().splitlines()[-1:]}", flush=True)
            continue
        s = json.loads(speed.read_text())
        print(f"{name:<8} {s['steps_per_s']:>8.2f} {s.get('peak_memory_gib', float('nan')):>9.2f}", flush=True)


if __name__ == "__main__":
    main()
