"""Issue #19's measurement: does a Latent-Shift motion delta animate a personalised toy model?

    python -m ls_video.toy.motion_transfer --video outputs/demo/model --base assets/toy-base \\
        --personal outputs/personal --out outputs/transfer [--ranks 4 16 64] [--scales 1.0 1.5] [--seeds 3]

Every row is the commands a user would type, printed as they run (``ls_video.commands.transfer extract|apply``,
``sample.py``, ``ls_video.commands.eval``); a row whose ``metrics.json`` exists is not sampled again. Writes
``OUT/table.md`` and ``OUT/table.json``: per row the model, the prompt set and direction / steps right /
colour / shape accuracy, plus the motion files' sizes.

Prompt sets: ``new`` is :func:`ls_video.toy.world.new_concept_prompts` (the 7 colour x shape pairs with
purple or a triangle, x 4 directions = 28 prompts), ``old`` is the 32 prompts of the video training.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

from ls_video.commands.stage import Stages
from ls_video.errors import command
from ls_video.toy.world import all_prompts, new_concept_prompts

# which U-Net parameters a layer-subset row moves (``transfer apply --include``)
LAYER_SETS = {"resnets": r"resnets\.", "attentions": r"attentions\.", "cross-attn k/v": r"attn2\.to_[kv]\.",
              "all but cross-attn k/v": r"^(?!.*attn2\.to_[kv]\.)"}


def sample_and_score(model: str, prompts_file: str, out: str, seeds: int, stages: Stages) -> dict:
    metrics_path = os.path.join(out, "metrics.json")
    if not os.path.isfile(metrics_path):
        stages.run("ls_video.commands.sample", "--model", model, "--prompts-file", prompts_file,
                   "--num-videos-per-prompt", str(seeds), "--num-frames", "6", "--num-inference-steps", "25",
                   "--guidance-scale", "4.0", "--seed", "0", "--batch-size", "32", "--out", out)
        stages.run("ls_video.commands.eval", out)
    else:
        stages.log.append(f"# {out}/metrics.json exists: reused")
    with open(metrics_path) as f:
        m = json.load(f)
    return {k: m.get(k) for k in ("direction_acc", "step_acc", "color_acc", "shape_acc", "consistency")} | {
        "n": m.get("protocol", {}).get("num_samples")}


def group_of(name: str) -> str:
    for group, pattern in (("cross-attn k/v", r"attn2\.to_[kv]\."), ("attentions", r"attentions\."),
                           ("resnets", r"resnets\."), ("conv/time/other", r"")):
        if re.search(pattern, name):
            return group
    return "conv/time/other"


def delta_stats(base: str, video: str, personal: str) -> dict:
    """Per layer group: how much the video and the personal fine-tune moved the weights (relative L2 norm),
    and the cosine between the two changes (0: they do not overlap; the motion adds cleanly)."""
    from ls_video.components import load_unet

    b, v, p = (load_unet(path).state_dict() for path in (base, video, personal))
    sums: dict[str, dict[str, float]] = {}
    for name, w in b.items():
        dv, dp = (v[name] - w).double(), (p[name] - w).double()
        s = sums.setdefault(group_of(name), {"w": 0.0, "video": 0.0, "personal": 0.0, "dot": 0.0, "params": 0})
        s["w"] += float(w.double().pow(2).sum())
        s["video"] += float(dv.pow(2).sum())
        s["personal"] += float(dp.pow(2).sum())
        s["dot"] += float((dv * dp).sum())
        s["params"] += w.numel()
    return {g: {"params": s["params"], "video_rel": (s["video"] / s["w"]) ** 0.5,
                "personal_rel": (s["personal"] / s["w"]) ** 0.5,
                "cosine": s["dot"] / max(1e-30, (s["video"] * s["personal"]) ** 0.5)} for g, s in sums.items()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ls_video.toy.motion_transfer", description=__doc__.split("\n")[0])
    p.add_argument("--video", default="outputs/demo/model", help="the Latent-Shift video model (exported folder)")
    p.add_argument("--base", default="assets/toy-base", help="the image base it was fine-tuned from")
    p.add_argument("--personal", default="outputs/personal", help="the personalised model (ls_video.toy.personalise)")
    p.add_argument("--out", default="outputs/transfer", help="output folder")
    p.add_argument("--ranks", type=int, nargs="*", default=[4, 16, 32],
                   help="low-rank motion files to try (at the toy's sizes rank 64 already stores every delta whole)")
    p.add_argument("--scales", type=float, nargs="*", default=[1.0], help="delta scales for the full delta")
    p.add_argument("--layers", nargs="*", default=[], choices=list(LAYER_SETS),
                   help="also apply the full delta to these layer subsets only")
    p.add_argument("--seeds", type=int, default=3, help="videos per prompt")
    p.add_argument("--no-video-rows", action="store_true",
                   help="skip sampling the video model itself (when another --out already has those rows)")
    return p.parse_args(argv)


def motion_files(args: argparse.Namespace, out: str, stages: Stages) -> dict:
    """Extract the full and the rank-R motion files (once); their sizes."""
    files = {}
    for rank in [None, *args.ranks]:
        name = "motion.safetensors" if rank is None else f"motion_r{rank}.safetensors"
        path = os.path.join(out, name)
        cmd = ["extract", "--video", args.video, "--base", args.base, "--out", path]
        if rank is not None:
            cmd += ["--rank", str(rank)]
        if not os.path.isfile(path):
            stages.run("ls_video.commands.transfer", *cmd)
        from safetensors.torch import load_file

        files[rank] = {"file": path, "bytes": os.path.getsize(path),
                       "numbers": sum(t.numel() for t in load_file(path).values())}

    return files


def rows_to_sample(args: argparse.Namespace, out: str, files: dict, stages: Stages) -> list[tuple[str, str, str]]:
    """``(label, model folder, prompt set)`` per table row, applying the motion files as needed."""

    def applied(tag: str, motion: str, scale: float, include: str | None = None) -> str:
        model = os.path.join(out, "models", tag)
        if not os.path.isfile(os.path.join(model, "model_index.json")):
            cmd = ["apply", "--motion", motion, "--target", args.personal, "--out", model, "--scale", f"{scale:g}"]
            if include:
                cmd += ["--include", include]
            stages.run("ls_video.commands.transfer", *cmd)
        return model

    full = files[None]["file"]
    rows = [("personalised + shift, no delta", applied("personal_s0", full, 0.0), "new")]
    if not args.no_video_rows:
        rows.append(("video model (no personalisation)", args.video, "new"))
    for scale in args.scales:
        rows.append((f"personalised + full delta (scale {scale:g})", applied(f"personal_full_s{scale:g}", full, scale),
                     "new"))
    for rank in args.ranks:
        rows.append((f"personalised + rank-{rank} delta", applied(f"personal_r{rank}", files[rank]["file"], 1.0),
                     "new"))
    for layers in args.layers:
        tag = "personal_" + "".join(c if c.isalnum() else "_" for c in layers)
        rows.append((f"personalised + full delta on {layers} only", applied(tag, full, 1.0, LAYER_SETS[layers]),
                     "new"))
    rows.append(("personalised + full delta (scale 1)", applied("personal_full_s1", full, 1.0), "old"))
    if not args.no_video_rows:
        rows.append(("video model (no personalisation)", args.video, "old"))

    return rows


def write_tables(out: str, results: list[dict], files: dict, stats: dict, log: list[str]) -> None:
    """``OUT/table.json`` (rows, motion files, delta statistics, commands) and ``OUT/table.md``."""
    with open(os.path.join(out, "table.json"), "w") as f:
        json.dump({"rows": results, "motion_files": {str(k): v for k, v in files.items()}, "delta_stats": stats,
                   "commands": log}, f, indent=2)
    lines = ["| model sampled | prompts | videos | direction | steps right | colour | shape |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['prompts']} concepts moving | {r['n']} | {r['direction_acc']:.2f} | "
                     f"{r['step_acc']:.2f} | {r['color_acc']:.2f} | {r['shape_acc']:.2f} |")
    lines += ["", "| layers | parameters | video change / weight | personal change / weight | cosine |",
              "|---|---|---|---|---|"]
    lines += [f"| {g} | {s['params']:,} | {s['video_rel']:.3f} | {s['personal_rel']:.3f} | {s['cosine']:+.3f} |"
              for g, s in stats.items()]
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


@command("python -m ls_video.toy.motion_transfer")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    stages = Stages()
    prompts = {"new": os.path.join(out, "prompts_new.txt"), "old": os.path.join(out, "prompts_old.txt")}
    for key, items in (("new", new_concept_prompts()), ("old", all_prompts())):
        with open(prompts[key], "w") as f:
            f.write("\n".join(items) + "\n")

    files = motion_files(args, out, stages)
    rows = rows_to_sample(args, out, files, stages)
    results = []
    for label, model, prompt_set in rows:
        sample_dir = os.path.join(out, "samples", f"{os.path.basename(model.rstrip('/'))}_{prompt_set}")
        start = time.perf_counter()
        metrics = sample_and_score(model, prompts[prompt_set], sample_dir, args.seeds, stages)
        results.append({"model": label, "path": model, "prompts": prompt_set, "samples": sample_dir, **metrics,
                        "seconds": round(time.perf_counter() - start, 1)})
        print(json.dumps(results[-1]), flush=True)

    write_tables(out, results, files, delta_stats(args.base, args.video, args.personal), stages.log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
