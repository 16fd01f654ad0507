"""Step time under DDP with one step-end agreement (:mod:`ls_video.consensus`) against the code before it.

    python benchmarks/consensus.py [--before REF] [--steps 30] [--devices 2] [--accelerator cpu]
        [--repeats 2] [--out DIR]

Runs ``train.py fit`` on the shipped toy config (every callback of ``configs/toy.yaml`` plus
``BucketCounts``; the CLI adds ``Preemption``; validation off) on a tiny random base, ``--devices``
processes under DDP, ``--steps`` steps, once from ``REF`` (extracted with ``git archive``; default: the
commit before ``ls_video/consensus.py`` was added) and once from this checkout, ``--repeats`` times each,
alternating. Prints the best steps/s of each (the StepSpeed callback's ``speed.json``) and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def before_ref() -> str:
    """The parent of the commit that added ``ls_video/consensus.py``."""
    added = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--", "ls_video/consensus.py"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    if not added:
        raise SystemExit("ls_video/consensus.py is not committed yet: pass --before REF")
    return f"{added[-1]}^"


def extract(ref: str, folder: Path) -> Path:
    """The tree of ``ref`` under ``folder`` (no checkout, the repository is not touched)."""
    if not (folder / "train.py").exists():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile() as tar:
            subprocess.run(["git", "archive", ref], cwd=ROOT, stdout=tar, check=True)
            tar.seek(0)
            with tarfile.open(fileobj=tar) as t:
                t.extractall(folder, filter="data")
    return folder


def config(out: Path, base: str, args: argparse.Namespace, name: str) -> Path:
    cfg = yaml.safe_load((ROOT / "configs" / "toy.yaml").read_text())
    run_dir = str(out / name)
    cfg["trainer"].update(max_steps=args.steps, devices=args.devices, strategy="ddp", accelerator=args.accelerator,
                          default_root_dir=run_dir, val_check_interval=None, limit_val_batches=0,
                          enable_progress_bar=False)
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = run_dir
    cfg["trainer"]["callbacks"].append({"class_path": "ls_video.callbacks.BucketCounts"})
    cfg["checkpoint"] = {"every_n_train_steps": 10**6}
    cfg["model"]["pretrained_model_name_or_path"] = base
    cfg["data"]["init_args"].update(cache_dir=str(out / "cache"), num_train_clips=64, num_val_clips=4,
                                    batch_size=2, world={"size": 16, "num_frames": 4, "object_size": 4})
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def steps_per_s(tree: Path, cfg: Path, run_dir: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    r = subprocess.run([sys.executable, "train.py", "fit", "-c", str(cfg)], cwd=tree, env=env,
                       capture_output=True, text=True)
    speed = next(run_dir.rglob("speed.json"), None)
    if r.returncode or speed is None:
        raise SystemExit(f"{tree}: failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return float(json.loads(speed.read_text())["steps_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default=None, help="git ref of the code before (default: see above)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp")) / "consensus_bench")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from ls_video.testing.tiny import save_tiny_base

    args.out.mkdir(parents=True, exist_ok=True)
    base = str(args.out / "base")
    if not (args.out / "base" / "model_index.json").exists():
        base = str(save_tiny_base(args.out / "base"))
    ref = args.before or before_ref()
    trees = {"before": extract(ref, args.out / "before-tree"), "after": ROOT}
    best = {"before": 0.0, "after": 0.0}
    for i in range(args.repeats):
        for name, tree in trees.items():
            run = f"{name}-{i}"
            rate = steps_per_s(tree, config(args.out, base, args, run), args.out / run)
            best[name] = max(best[name], rate)
            print(f"  {name:<6} run {i}: {rate:.2f} steps/s", flush=True)
    print(f"{'':<8}{'steps/s':>8}   ({args.devices} x {args.accelerator}, DDP, toy config, {args.steps} steps, "
          f"best of {args.repeats}; before = {ref})")
    for name in ("before", "after"):
        print(f"{name:<8}{best[name]:>8.2f}")
    print(f"ratio after/before: {best['after'] / best['before']:.3f}")


if __name__ == "__main__":
    main()
