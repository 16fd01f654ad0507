"""Peak training memory and steps/s per configuration, each in its own process, through the real CLI.

    python benchmarks/memory.py [--size sd15|tiny] [--steps 12] [--rows ROW,...] [--out DIR] [--limit-s 150]

Rows run most important first and each is printed (and appended to ``OUT/memory.jsonl``) as soon as it is
measured, so a short GPU window still yields the top of the table. Every row is ``train.py fit -c
configs/sd15.yaml`` (every callback of the shipped config) on a base with random SD-1.5-sized weights (no
download) and random latent shards that carry cached text embeddings (77 x 768 at SD-1.5 size; the text encoder is
not loaded: ``model.cached_text_embeddings``), bf16-mixed on a GPU:

    full-16x256         full fine-tune, 16 frames x 256 px, gradient checkpointing off
    full-16x256-ckpt    the same, checkpointing on
    lora64-16x256       configs/lora.yaml at rank 64, checkpointing off
    lora64-16x256-ckpt  the same, checkpointing on
    full8bit-16x256-ckpt  full fine-tune with optim.optimizer adamw8bit (needs bitsandbytes and a GPU)
    full-16x512-ckpt, lora64-16x512-ckpt, full-8x256-ckpt, full-24x256-ckpt, lora64-24x256-ckpt

Peak memory is ``torch.cuda.max_memory_allocated`` from the StepSpeed callback (``speed.json``); on a CPU the
process's peak resident set size is printed instead (``--size tiny``: the check that the script works, its
numbers mean nothing at that size). A row that runs out of memory prints ``OOM``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LORA = ["-c", "configs/lora.yaml", "--model.lora.rank", "64", "--model.lora.alpha", "64"]
NO_CKPT = ["--model.performance.gradient_checkpointing", "false"]
ROWS = {  # name: (frames, pixels, overlay)
    "full-16x256": (16, 256, NO_CKPT),
    "full-16x256-ckpt": (16, 256, []),
    "lora64-16x256": (16, 256, LORA + NO_CKPT),
    "lora64-16x256-ckpt": (16, 256, LORA),
    "full8bit-16x256-ckpt": (16, 256, ["--model.optim.optimizer", "adamw8bit"]),
    "full-16x512-ckpt": (16, 512, []),
    "lora64-16x512-ckpt": (16, 512, LORA),
    "full-8x256-ckpt": (8, 256, []),
    "full-24x256-ckpt": (24, 256, []),
    "lora64-24x256-ckpt": (24, 256, LORA),
}


def base_folder(out: Path, size: str) -> tuple[str, tuple[int, int]]:
    """(random-weight base folder, its text embeddings' shape ``(L, D)``), written once."""
    from ls_video.components import save_sd_folder
    from ls_video.testing.tiny import tiny_components

    base = out / f"base-{size}"
    if size == "sd15":
        from ls_video.testing.presets import sd15_components

        parts = None if (base / "model_index.json").exists() else sd15_components()
    else:
        parts = None if (base / "model_index.json").exists() else tiny_components()
    if parts is not None:
        save_sd_folder(base, parts)
    tokenizer = json.loads((base / "tokenizer" / "tokenizer_config.json").read_text())
    encoder = json.loads((base / "text_encoder" / "config.json").read_text())
    return str(base), (int(tokenizer["model_max_length"]), int(encoder["hidden_size"]))


def shards(out: Path, frames: int, latent: int, text: tuple[int, int]) -> str:
    from ls_video.datamodules.synthetic import write_synthetic_shards

    folder = out / f"shards-{frames}x{latent}-{text[0]}x{text[1]}"
    if not (folder / "shard-000001.tar").exists():
        write_synthetic_shards(folder, num_shards=2, per_shard=8, shape=(frames, 4, latent, latent), text_embeds=text)
    return str(folder / "shard-{000000..000001}.tar")


def config(out: Path, name: str, base: str, urls: str, frames: int, steps: int, precision: str) -> Path:
    cfg = yaml.safe_load((ROOT / "configs" / "sd15.yaml").read_text())
    run_dir = str(out / name)
    cfg["trainer"].update(max_steps=steps, devices=1, precision=precision, default_root_dir=run_dir,
                          val_check_interval=None, limit_val_batches=0, enable_progress_bar=False, accelerator="auto")
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = run_dir
    names = {c["class_path"] for c in cfg["trainer"]["callbacks"]}
    if "ls_video.callbacks.StepSpeed" not in names:
        cfg["trainer"]["callbacks"].append({"class_path": "ls_video.callbacks.StepSpeed"})
    cfg["checkpoint"] = {"every_n_train_steps": 10**6}
    cfg["model"]["pretrained_model_name_or_path"] = base
    cfg["data"]["init_args"].update(train_urls=urls, val_urls=None, num_workers=1, num_frames=frames,
                                    batch_size=1, shuffle_buffer=4, allow_vae_mismatch=True)
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def measure(out: Path, name: str, args: argparse.Namespace, base: str, text: tuple[int, int]) -> dict:
    frames, pixels, overlay = ROWS[name]
    latent = pixels // 8 if args.size == "sd15" else 8
    cfg = config(out, name, base, shards(out, frames, latent, text), frames, args.steps, args.precision)
    cmd = [sys.executable, "train.py", "fit", "-c", str(cfg), "--model.cached_text_embeddings", "true", *overlay]
    start = time.perf_counter()
    status, rss_gib, _ = run_alone(cmd, out / f"{name}.log", args.limit_s)
    row = {"row": name, "frames": frames, "pixels": pixels, "wall_s": round(time.perf_counter() - start, 1),
           "peak_rss_gib": rss_gib}
    speed = next((out / name).rglob("speed.json"), None)
    if status is not None or speed is None:
        return {**row, "status": status or "failed: no speed.json"}
    s = json.loads(speed.read_text())
    return {**row, "status": "ok", "steps_per_s": s["steps_per_s"], "peak_gpu_gib": s.get("peak_memory_gib")}


def run_alone(cmd: list[str], log: Path, limit_s: float) -> tuple[str | None, float, str]:
    """Run ``cmd`` with stderr in ``log``: (``None`` or why it failed, its own peak resident set in GiB, stderr)."""
    status = None
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + limit_s
        while not (waited := os.wait4(proc.pid, os.WNOHANG))[0]:
            if time.monotonic() > deadline:
                proc.kill()
                waited, status = os.wait4(proc.pid, 0), f"timeout after {limit_s:.0f} s"
                break
            time.sleep(0.5)
    _, code, usage = waited
    proc.returncode = os.waitstatus_to_exitcode(code)
    stderr = log.read_text()
    if status is None and proc.returncode != 0:
        tail = (stderr.strip().splitlines() or ["?"])[-1]
        status = "OOM" if "out of memory" in stderr.lower() else f"failed: {tail[:160]}"
    return status, round(usage.ru_maxrss / 2**20, 2), stderr


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=["sd15", "tiny"], default="sd15", help="U-Net size (tiny: a CPU check)")
    p.add_argument("--steps", type=int, default=12, help="training steps per row (steps/s skips the first ones)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows, in order; known: {', '.join(ROWS)}")
    p.add_argument("--precision", default="bf16-mixed", help="trainer precision (32-true on CPUs without bf16)")
    p.add_argument("--limit-s", type=float, default=150, help="seconds one row may take before it is abandoned")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp")) / "memory")
    args = p.parse_args()
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    base, text = base_folder(args.out, args.size)
    print(f"{'row':<22} {'steps/s':>8} {'peak GPU GiB':>13} {'RSS GiB':>8}  ({args.size}, {args.precision}, "
          f"{args.steps} steps, batch 1 clip, cached text embeddings)", flush=True)
    for name in rows:
        row = measure(args.out, name, args, base, text)
        with open(args.out / "memory.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if row["status"] != "ok":
            print(f"{name:<22} {row['status']}", flush=True)
            continue
        gpu = row["peak_gpu_gib"]
        gpu = f"{gpu:>13.2f}" if gpu is not None else f"{'-':>13}"
        print(f"{name:<22} {row['steps_per_s']:>8.2f} {gpu} {row['peak_rss_gib']:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
