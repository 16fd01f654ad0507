"""The zero-shot benchmarks of the text-to-video literature, with the published extractors.

    ls-video benchmark ucf101 --model M --videos UCF101_DIR --i3d i3d_torchscript.pt [--c3d c3d_ucf101.pt] --out OUT
    ls-video benchmark msrvtt --model M --annotations test_videodatainfo.json --videos MSRVTT_DIR
        --clip-model openai/clip-vit-base-patch32 [--i3d i3d_torchscript.pt] --out OUT

``ucf101``: one prompt per class, samples drawn with the dataset's class distribution, FVD (I3D, fvd2048_16f
by default), IS (C3D) and FID (Inception, per frame) when their networks are given. ``msrvtt``: one caption
per test video (2990), CLIPSIM (raw cosine, ViT-B/32), CLIP-FID and FVD. The networks are TorchScript files
(a path, or a URL downloaded once into ``~/.cache/ls_video/metrics``). Samples go to ``OUT/samples`` one file
at a time (written atomically): a killed benchmark run again with the same options continues where it stopped.
With several processes (``torchrun --nproc-per-node N``, or ``--rank`` / ``--world-size``) each generates the
samples whose index is its rank modulo the world size; rank 0 waits for all and scores. Writes
``OUT/benchmark.json`` (scores and the full protocol) and prints a row in the layout of the papers' tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from ls_video.errors import UsageError, command

PROG = "ls-video benchmark"
CLIP_CHUNK = 256


def _common(p: argparse.ArgumentParser, samples_help: str, samples_default: int | None) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--model", required=True, help="diffusers folder or Hub id (ORG/NAME), exported folder, or .ckpt")
    g.add_argument("--out", required=True, help="folder for samples/, plan.json and benchmark.json")
    g.add_argument("--num-samples", type=int, default=samples_default, help=samples_help)
    g.add_argument("--num-frames", type=int, default=16, help="frames per generated and real clip (fvd2048_16f: 16)")
    g.add_argument("--height", type=int, default=None, help="pixels (default: the model's native size)")
    g.add_argument("--width", type=int, default=None, help="pixels (default: the model's native size)")
    g.add_argument("--num-inference-steps", type=int, default=50, help="denoising steps")
    g.add_argument("--guidance-scale", type=float, default=7.5, help="classifier-free guidance weight")
    g.add_argument("--scheduler", default="ddim", choices=["ddim", "dpm", "euler"], help="sampler")
    g.add_argument("--seed", type=int, default=0,
                   help="sample i uses seed + i; also seeds the choice of real clips (and of captions)")
    g.add_argument("--batch-size", type=int, default=8, help="videos denoised together")
    g.add_argument("--format", default="mp4", choices=["mp4", "npy"],
                   help="sample files: mp4 (H.264, crf 18) or npy (lossless uint8, no pickle)")
    g.add_argument("--fps", type=float, default=8, help="frame rate of mp4 samples")
    g.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK when CUDA is there, else cpu), cpu, cuda:1")
    g.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="sampling dtype")
    g.add_argument("--rank", type=int, default=int(os.environ.get("RANK", 0)),
                   help="this process's share of the samples (default: $RANK, as torchrun sets)")
    g.add_argument("--world-size", type=int, default=int(os.environ.get("WORLD_SIZE", 1)),
                   help="number of generating processes (default: $WORLD_SIZE)")
    g.add_argument("--wait-timeout", type=float, default=24 * 3600,
                   help="seconds rank 0 waits for the other ranks' samples before scoring")
    g.add_argument("--generate-only", action="store_true", help="write the samples, do not score")
    m = p.add_argument_group("scoring (real clips and the published networks)")
    m.add_argument("--videos", required=True, help="folder of the dataset's real videos")
    m.add_argument("--num-real", type=int, default=None,
                   help="real clips for FVD / FID (default: the number of samples; fvd2048_16f: 2048)")
    m.add_argument("--frame-stride", type=int, default=1,
                   help="frames between consecutive frames of a real clip (StyleGAN-V: 1; DynamiCrafter's UCF: 3)")
    m.add_argument("--i3d", help="StyleGAN-V's i3d_torchscript.pt (path or URL): FVD")
    m.add_argument("--inception", help="clean-fid's inception-2015-12-05.pt (path or URL): FID over frames")
    m.add_argument("--metrics-device", default=None, help="device for the feature networks (default: --device)")
    m.add_argument("--metrics-batch-size", type=int, default=8, help="videos per feature-network batch")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[2:]))
    sub = p.add_subparsers(dest="benchmark", required=True, metavar="{ucf101,msrvtt}")
    ucf = sub.add_parser("ucf101", help="UCF-101 zero-shot: FVD, IS, FID", description=(
        "UCF-101 zero-shot: one prompt per class, samples with the dataset's class distribution."))
    _common(ucf, "samples, spread over classes in proportion to their videos (fvd2048_16f: 2048)", 2048)
    ucf.add_argument("--c3d", help="StyleGAN-V's c3d_ucf101.pt (path or URL): IS over the samples (needs 16 frames)")
    ucf.add_argument("--is-splits", type=int, default=10,
                     help="splits of the IS (StyleGAN-V: 10; needs as many samples)")
    ucf.add_argument("--prompts", help="JSON {CLASS: PROMPT} for every class (default: the class name in words)")
    vtt = sub.add_parser("msrvtt", help="MSR-VTT zero-shot: CLIPSIM, CLIP-FID, FVD", description=(
        "MSR-VTT zero-shot: one caption per test video; CLIPSIM, CLIP-FID and FVD."))
    _common(vtt, "samples: the first N videos of the split (default: all, 2990 for the official test split)", None)
    vtt.add_argument("--annotations", required=True,
                     help="MSR-VTT's test_videodatainfo.json / MSRVTT_data.json, or CSV / JSON(L) rows of "
                          "video_id, caption")
    vtt.add_argument("--split", default="test", help="split of the official JSON")
    vtt.add_argument("--caption", default="random", choices=["random", "first"],
                     help="which of a video's captions is its prompt (random: seeded by --seed)")
    vtt.add_argument("--clip-model", help="CLIP ViT-B/32 (folder or Hub id): CLIPSIM and CLIP-FID")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    for name in ("num_frames", "num_inference_steps", "batch_size", "frame_stride", "world_size", "metrics_batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 <= args.rank < args.world_size:
        p.error(f"--rank {args.rank} is not in [0, --world-size {args.world_size})")
    if args.num_samples is not None and args.num_samples < 2:
        p.error("--num-samples must be >= 2")
    if getattr(args, "c3d", None) and args.num_frames != 16:
        p.error("--c3d (IS) needs --num-frames 16: the C3D network takes 16-frame clips")
    if getattr(args, "c3d", None) and args.num_samples < args.is_splits:
        p.error(f"--c3d (IS) needs at least --is-splits {args.is_splits} samples")
    if not (args.generate_only or args.i3d or args.inception or getattr(args, "c3d", None)
            or getattr(args, "clip_model", None)):
        nets = "--i3d, --c3d, --inception" if args.benchmark == "ucf101" else "--i3d, --clip-model, --inception"
        p.error(f"nothing to score: give at least one of {nets} (or --generate-only)")
    return args


# --- the plan: what to generate, fixed once per out folder --------------------------------------------------


def make_plan(args: argparse.Namespace) -> tuple[dict, dict]:
    """The generation plan (rows and settings; must match a resumed run's) and protocol extras."""
    from ls_video.metrics import protocols

    extra: dict = {}
    if args.benchmark == "ucf101":
        rows, counts = protocols.ucf101_plan(args.videos, args.num_samples, args.seed, args.prompts)
        extra.update(counts, prompts="class name in words" if not args.prompts else args.prompts)
    else:
        captions = protocols.msrvtt_captions(args.annotations, args.split, args.caption, args.seed)
        captions = captions[:args.num_samples] if args.num_samples else captions
        rows = [dict(index=i, seed=args.seed + i, video_id=c["video_id"], prompt=c["caption"])
                for i, c in enumerate(captions)]
        extra.update(annotations=args.annotations, split=args.split, caption=args.caption,
                     videos_in_split=len(captions))
    generation = dict(model=str(args.model), num_frames=args.num_frames, height=args.height, width=args.width,
                      num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
                      scheduler=args.scheduler, format=args.format, fps=args.fps, dtype=args.dtype,
                      seeds=f"seed + index: {args.seed}..{args.seed + len(rows) - 1}")
    return dict(benchmark=args.benchmark, generation=generation, rows=rows), extra


def _write_json(path: str, data: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def fix_plan(out: str, plan: dict) -> None:
    """Write ``plan.json``, or check that the one there (a run to continue) is the same plan."""
    path = os.path.join(out, "plan.json")
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
        if old != json.loads(json.dumps(plan)):
            diff = sorted(k for k in plan["generation"] if old.get("generation", {}).get(k) != plan["generation"][k])
            what = f"options {diff}" if diff else "prompts or sample count"
            raise UsageError(f"{out} holds samples of another benchmark run ({what} differ); use another --out "
                             "or the same options to continue it")
        return
    os.makedirs(out, exist_ok=True)
    _write_json(path, plan)


def sample_path(out: str, index: int, fmt: str) -> str:
    return os.path.join(out, "samples", f"{index:05d}.{fmt}")


def save_sample(path: str, video: np.ndarray, fps: float) -> None:
    """Write atomically: a killed run leaves whole samples or none."""
    from ls_video.video_io import write_video

    stem, ext = os.path.splitext(path)
    tmp = f"{stem}.part{ext}"
    if ext == ".npy":
        with open(tmp, "wb") as f:
            np.save(f, video, allow_pickle=False)
    else:
        write_video(tmp, video, fps=fps)
    os.replace(tmp, path)


def load_sample(path: str) -> np.ndarray:
    if path.endswith(".npy"):
        return np.load(path, allow_pickle=False)
    from ls_video.video_io import read_video

    return read_video(path)[0]


def _device(name: str) -> str:
    import torch

    if name != "auto":
        return name
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"


def generate(args: argparse.Namespace, plan: dict) -> int:
    """Write this rank's missing samples; returns how many were written now."""
    import torch

    from ls_video.video_io import to_uint8

    todo = [r for r in plan["rows"] if r["index"] % args.world_size == args.rank
            and not os.path.isfile(sample_path(args.out, r["index"], args.format))]
    if not todo:
        return 0
    from ls_video.checkpoint import load_pipeline
    from ls_video.schedulers import make_scheduler

    device = _device(args.device)
    pipe = load_pipeline(args.model)
    pipe.scheduler = make_scheduler(args.scheduler, pipe.scheduler.config)
    pipe.to(device)
    if args.dtype != "float32":
        pipe.to(dtype=getattr(torch, args.dtype))
    os.makedirs(os.path.join(args.out, "samples"), exist_ok=True)
    for start in range(0, len(todo), args.batch_size):
        chunk = todo[start:start + args.batch_size]
        videos = pipe([r["prompt"] for r in chunk], num_frames=args.num_frames, height=args.height, width=args.width,
                      num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
                      generator=[torch.Generator(device).manual_seed(r["seed"]) for r in chunk]).frames
        for row, video in zip(chunk, videos, strict=True):
            save_sample(sample_path(args.out, row["index"], args.format), to_uint8(np.asarray(video)), args.fps)
        print(f"rank {args.rank}: {start + len(chunk)}/{len(todo)} samples", file=sys.stderr, flush=True)
    return len(todo)


def wait_for_samples(args: argparse.Namespace, plan: dict) -> None:
    deadline = time.monotonic() + args.wait_timeout
    while True:
        missing = [r["index"] for r in plan["rows"]
                   if not os.path.isfile(sample_path(args.out, r["index"], args.format))]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise UsageError(f"{len(missing)} samples still missing after --wait-timeout {args.wait_timeout:g} s "
                             f"(e.g. index {missing[0]}); run the benchmark again to generate them")
        time.sleep(5)


# --- scoring ------------------------------------------------------------------------------------------------


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def score(args: argparse.Namespace, plan: dict, extra: dict) -> dict:
    """Every metric the given networks allow, and the protocol that produced them."""
    from ls_video.metrics import protocols
    from ls_video.metrics.frechet import frechet_distance_of

    rows = plan["rows"]
    paths = [sample_path(args.out, r["index"], args.format) for r in rows]
    first = load_sample(paths[0])
    frames, height, width = (int(s) for s in first.shape[:3])
    device = args.metrics_device or _device(args.device)
    bs = args.metrics_batch_size
    num_real = args.num_real or len(rows)
    if args.benchmark == "ucf101":
        real_paths = [p for files in protocols.ucf101_videos(args.videos).values() for p in files]
    else:
        real_paths = [protocols.find_video(args.videos, r["video_id"]) for r in rows]
    needs_real = bool(args.i3d or args.inception or getattr(args, "clip_model", None))
    specs = protocols.real_clips(real_paths, num_real, frames, args.frame_stride, height, width, args.seed) \
        if needs_real else []

    def generated():
        for chunk in _chunks(paths, bs):
            yield [load_sample(p) for p in chunk]

    def real():
        for chunk in _chunks(specs, bs):
            yield [protocols.load_clip(s, frames, args.frame_stride, height, width) for s in chunk]

    def features(fn, batches) -> np.ndarray:
        return np.concatenate([fn(b) for b in batches])

    metrics: dict = {}
    protocol = dict(benchmark=args.benchmark, num_generated=len(rows), num_real=len(specs), num_frames=frames,
                    frame_stride=args.frame_stride, resolution=[height, width], generation=plan["generation"],
                    real_clips=dict(folder=args.videos, seed=args.seed, frame_stride=args.frame_stride,
                                    resize="centre crop to the samples' aspect, area resize (bilinear up)",
                                    from_videos=len(real_paths)),
                    **extra)
    if args.i3d:
        from ls_video.metrics.i3d import I3D

        net = I3D(args.i3d, device, bs)
        metrics["fvd"] = frechet_distance_of(features(net, generated()), features(net, real()), biased=True)
        protocol["fvd"] = dict(net.protocol, name=protocols.fvd_name(len(rows), len(specs), frames, args.frame_stride),
                               covariance="1/N (StyleGAN-V)", precision="float64")
    if getattr(args, "c3d", None):
        from ls_video.metrics.i3d import C3D, inception_score

        net = C3D(args.c3d, device, bs)
        metrics["is"], metrics["is_std"] = inception_score(features(net, generated()), args.is_splits)
        protocol["is"] = dict(net.protocol, splits=args.is_splits, shuffle="RandomState(42)")
    if args.inception:
        from ls_video.metrics.inception import Inception

        net = Inception(args.inception, device)
        metrics["fid"] = frechet_distance_of(features(net.frames, generated()), features(net.frames, real()))
        protocol["fid"] = dict(net.protocol, covariance="1/(N-1) (clean-fid)", precision="float64")
    if getattr(args, "clip_model", None):
        from ls_video.metrics.clipsim import clipsim
        from ls_video.metrics.inception import clip_frame_features

        sims = []  # (clipsim loads CLIP once a call: a call per CLIP_CHUNK videos)
        for chunk in _chunks(list(zip(rows, paths, strict=True)), CLIP_CHUNK):
            out = clipsim([load_sample(p) for _, p in chunk], [r["prompt"] for r, _ in chunk], args.clip_model, device)
            sims.append((out["clipsim"], len(chunk)))
            protocol["clipsim"] = out["clipsim_protocol"]
        metrics["clipsim"] = float(sum(s * n for s, n in sims) / len(rows))
        gen, proto = [], None
        for batch in generated():
            feats, proto = clip_frame_features(batch, args.clip_model, device)
            gen.append(feats)
        ref = [clip_frame_features(b, args.clip_model, device)[0] for b in real()]
        metrics["clip_fid"] = frechet_distance_of(np.concatenate(gen), np.concatenate(ref))
        protocol["clip_fid"] = dict(proto, covariance="1/(N-1) (clean-fid)", precision="float64")
    return dict(metrics=metrics, protocol=protocol)


def table_row(result: dict) -> str:
    """A row in the layout of the papers' tables (UCF-101: IS, FVD; MSR-VTT: CLIPSIM, CLIP-FID, FVD)."""
    m = result["metrics"]

    def cell(key: str, digits: int) -> str:
        return f"{m[key]:.{digits}f}" if key in m else "-"

    if result["protocol"]["benchmark"] == "ucf101":
        return f"| Method | IS | FVD |\n| Latent-Shift (this run) | {cell('is', 2)} | {cell('fvd', 2)} |"
    return ("| Method | CLIPSIM | CLIP-FID | FVD |\n"
            f"| Latent-Shift (this run) | {cell('clipsim', 4)} | {cell('clip_fid', 2)} | {cell('fvd', 2)} |")


def run(args: argparse.Namespace) -> dict | None:
    """Plan, generate this rank's samples, and (rank 0) score; ``None`` on other ranks or ``--generate-only``."""
    if not os.path.isdir(args.videos) and not args.generate_only:
        raise FileNotFoundError(f"--videos {args.videos} is not a folder")
    plan, extra = make_plan(args)
    fix_plan(args.out, plan)
    written = generate(args, plan)
    print(f"rank {args.rank}: {written} samples written now, "
          f"{len(plan['rows']) - written} of {len(plan['rows'])} were there or belong to other ranks", file=sys.stderr)
    if args.generate_only or args.rank != 0:
        return None
    wait_for_samples(args, plan)
    result = score(args, plan, extra)
    _write_json(os.path.join(args.out, "benchmark.json"), result)
    return result


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    if result is not None:
        print(table_row(result))
        print(f"({result['protocol']['num_generated']} samples, benchmark.json written to {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
