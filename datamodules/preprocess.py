"""Videos + captions -> WebDataset shards of VAE latents, as a Lightning predict loop.

    python -m ls_video.datamodules.preprocess --videos SRC --vae PATH_OR_ID --out DIR [--num-frames 16]
        [--fps 8 | --frame-stride K] [--clip-start start|middle|random] [--clips-per-video K]
        [--size 256] [--shard-size 1000] [--batch-size 8] [--devices N] [--num-nodes N] [--text-encoder BASE]

Only the frames a clip needs are decoded (``ls_video.datamodules.decode``). Source ``i`` of the sorted source
list always goes to shard ``i // shard_size`` (raw-video tar shard ``j`` in: output shard ``j``) and
shard ``k`` to rank ``k % world_size``, so ranks write disjoint shards and a rerun skips shards that
are already complete (a shard appears under its final name only once fully written). Videos, tar
members or tars that cannot give a clip are skipped and counted by reason in ``DIR/report.json``;
``DIR/index.json`` lists the shards. With ``--text-encoder`` each sample also carries its caption's text
embeddings (:mod:`ls_video.datamodules.text_cache`), so training never loads the text encoder.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import lightning as L
import numpy as np
import torch

from ls_video.datamodules.buckets import (
    Bucket,
    add_bucket_args,
    bucket_settings,
    bucket_summary,
)
from ls_video.datamodules.clip_stream import ClipStream, collate, file_units, parts_per_shard, tar_units
from ls_video.datamodules.clips import CLIP_STARTS, ClipSpec
from ls_video.datamodules.shard_writer import SHARD_PATTERN, ShardWriterCallback, write_index
from ls_video.datamodules.sources import list_sources, shard_urls
from ls_video.datamodules.text_cache import TextCache
from ls_video.errors import UsageError, command
from ls_video.shipped import shipped_path
from ls_video.vae_space import pixels_to_vae


class VaeEncoder(L.LightningModule):
    """Frozen VAE; ``predict_step`` turns ``(B, F, S, S, 3)`` uint8 frames into unscaled latent means (and, with
    ``text``, the captions into cached text embeddings)."""

    def __init__(self, vae_path: str, text: TextCache | None = None) -> None:
        super().__init__()
        from ls_video.components import load_vae

        self.vae = load_vae(vae_path)
        self.vae_path = vae_path
        self.text = text

    def on_predict_start(self) -> None:
        if self.text is not None:
            self.text.to(self.device)

    @torch.no_grad()
    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """``latents``: ``(B, F, C, h, w)`` float16, or a list of ``(F, C, h, w)`` for a list of clips."""
        frames = batch["frames"]
        if frames is None:
            return {"latents": None, **batch}
        if torch.is_tensor(frames):
            latents = self.encode(frames)
        else:
            latents = encode_by_shape(self.encode, frames)
        if self.text is not None:
            batch = {**batch, "text_embeds": self.text([g["caption"] for g in batch["good"]])}
        return {**batch, "latents": latents}

    def encode(self, frames: torch.Tensor) -> np.ndarray:
        """``(B, F, H, W, 3)`` uint8 -> ``(B, F, C, h, w)`` float16 unscaled latent means."""
        b, f = frames.shape[:2]
        flat = pixels_to_vae(frames.to(self.device).flatten(0, 1), self.vae.dtype)
        dtype = torch.bfloat16 if self.device.type == "cuda" else None
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            latents = self.vae.encode(flat).latent_dist.mean
        return latents.float().unflatten(0, (b, f)).cpu().numpy().astype(np.float16)


def encode_by_shape(encode, clips: list[torch.Tensor]) -> list[np.ndarray]:
    """Encode clips of mixed shapes (bucketed preprocessing): each shape as one batch, order kept."""
    out: list[np.ndarray | None] = [None] * len(clips)
    for shape in dict.fromkeys(c.shape for c in clips):
        idx = [i for i, c in enumerate(clips) if c.shape == shape]
        for i, latents in zip(idx, encode(torch.stack([clips[i] for i in idx])), strict=True):
            out[i] = latents
    return out


def preprocess(videos: str, vae: str, out: str, num_frames: int = 16, fps: float | None = 8,
               frame_stride: int | None = None, size: int = 256, shard_size: int = 1000,
               batch_size: int = 8, num_workers: int = 2, devices: int | str = 1, num_nodes: int = 1,
               accelerator: str = "auto", video_dir: str | None = None, in_process: bool = False,
               clip_start: str = "start", clips_per_video: int = 1, seed: int = 0,
               buckets: tuple[Bucket, ...] = (), frame_buckets: tuple[int, ...] = (),
               text_encoder: str | None = None) -> dict:
    """Run the job (see the module docstring) and return the merged report; ``buckets`` / ``frame_buckets``:
    :mod:`ls_video.datamodules.buckets`; ``text_encoder``: cache each caption's text embeddings too
    (:mod:`ls_video.datamodules.text_cache`). ``in_process`` runs the same predict step and writer in a plain loop
    on this
    process's device, without a ``Trainer`` (for callers that already run inside one, e.g.
    ``ToyDataModule.prepare_data``)."""
    if frame_stride is not None:
        fps = None
    if shard_size < 1 or batch_size < 1:
        raise UsageError("shard_size and batch_size must be >= 1")
    spec = ClipSpec(num_frames, size, fps, frame_stride, clip_start, clips_per_video, seed, buckets, frame_buckets)
    urls = shard_urls(videos)
    sources = list_sources(videos, video_dir) if urls is None else []
    units = file_units(sources, shard_size, batch_size) if urls is None else tar_units(urls)
    os.makedirs(out, exist_ok=True)
    text = TextCache(text_encoder) if text_encoder else None
    model = VaeEncoder(vae, text)
    settings = {**_settings(model, spec), "shard_size": shard_size if urls is None else None,
                **(text.settings() if text else {})}
    trainer = None
    if not in_process:
        trainer = L.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes, logger=False,
                            enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False)
    rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
    pending = [u for u in units if u.shard % world == rank
               and not os.path.exists(os.path.join(out, SHARD_PATTERN.format(u.shard)))]
    total = sum(len(u.sources) for u in pending) if urls is None and clips_per_video == 1 else None
    loader = torch.utils.data.DataLoader(ClipStream(pending, spec), batch_size=batch_size, num_workers=num_workers,
                                         collate_fn=collate)
    writer = ShardWriterCallback(out, parts_per_shard(pending), settings, total, rank)
    elapsed = _encode_all(model, loader, writer, trainer)
    if text is not None and rank == 0:
        text.write_empty(out)  # caption dropout's target when training from these shards
    report = write_index(out, settings, write=rank == 0)
    report["rank"] = rank
    report["clips_per_s_rank0"] = writer.clips / elapsed if writer.clips and elapsed > 0 else None
    return report


def _encode_all(model: VaeEncoder, loader: torch.utils.data.DataLoader, writer: ShardWriterCallback,
                trainer: L.Trainer | None) -> float:
    """Encode and write every pending clip, in this process or as the trainer's predict loop; the seconds taken."""
    start = time.perf_counter()
    if trainer is None:
        for i, batch in enumerate(loader):
            writer.write(model.predict_step(batch, i))
        writer.finish()
    else:  # every rank runs predict, even with nothing left to do, so collective calls line up
        trainer.callbacks.append(writer)
        with warnings.catch_warnings():  # the writer keys samples itself; it needs no batch indices
            warnings.filterwarnings("ignore", "Couldn't infer the batch indices")
            trainer.predict(model, loader, return_predictions=False)
    elapsed = time.perf_counter() - start
    if trainer is not None:
        trainer.strategy.barrier()
    return elapsed


def _settings(model: VaeEncoder, spec: ClipSpec) -> dict:
    from ls_video.components import vae_fingerprint

    return {**dict(vae=model.vae_path, vae_fingerprint=vae_fingerprint(model.vae),
                latent_channels=int(model.vae.config.latent_channels),
                scaling_factor=float(model.vae.config.scaling_factor),
                shift_factor=getattr(model.vae.config, "shift_factor", None), scaled=False, size=spec.size,
                fps=spec.fps if spec.stride is None else None, frame_stride=spec.frame_stride,
                clip_start=spec.clip_start, clips_per_video=spec.clips_per_video, seed=spec.seed),
            **bucket_settings(spec, 2 ** (len(model.vae.config.block_out_channels) - 1))}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ls_video.datamodules.preprocess", description=__doc__.split("\n")[0])
    p.add_argument("--videos", required=True,
                   help="folder of videos + .txt captions, a .csv/.jsonl of path,caption, or raw-video tar shards "
                        "as video2dataset writes them ({key}.mp4 + .txt + .json): 'raw/{00000..00099}.tar', "
                        "URLs or 'pipe:' commands, read as streams")
    p.add_argument("--video-dir", default=None, help="folder the CSV's paths (or WebVid videoids) are relative to")
    p.add_argument("--vae", required=True, help="diffusers base folder/id (its vae/ is used) or a VAE folder")
    p.add_argument("--out", required=True, help="output folder for shards, index.json and report.json")
    p.add_argument("--num-frames", type=int, default=16, help="frames per clip")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--fps", type=float, default=8,
                   help="clip frame rate: the frames nearest the times start + k/fps (default 8)")
    g.add_argument("--frame-stride", type=int, default=None, help="take every K-th frame instead of --fps")
    p.add_argument("--clip-start", choices=CLIP_STARTS, default="start",
                   help="where a clip sits in its video: start (default), middle, or random (seeded per video)")
    p.add_argument("--clips-per-video", type=int, default=1,
                   help="K non-overlapping clips spread over each video, each its own sample (0: as many as fit)")
    p.add_argument("--seed", type=int, default=0, help="seed of --clip-start random")
    p.add_argument("--size", type=int, default=256, help="square side in pixels after resize + center crop")
    add_bucket_args(p)
    p.add_argument("--shard-size", type=int, default=1000,
                   help="source videos per output shard (= clips with one clip per video); tar shards in: "
                        "one output shard per input shard")
    p.add_argument("--batch-size", type=int, default=8, help="clips encoded together")
    p.add_argument("--num-workers", type=int, default=2, help="decoding worker processes per device")
    p.add_argument("--devices", default="1", help="devices per node (Lightning syntax: 1, 4, auto)")
    p.add_argument("--num-nodes", type=int, default=1, help="number of nodes")
    p.add_argument("--accelerator", default="auto", help="cpu, gpu, auto")
    p.add_argument("--text-encoder", default=None, metavar="BASE",
                   help="diffusers base folder/id whose text_encoder/ and tokenizer/ encode each caption into the "
                        "shards (text_embeds.npy, plus empty_text_embeds.npy); then train with "
                        "--model.cached_text_embeddings true and the text encoder is never loaded")
    return p.parse_args(argv)


@command("ls-video preprocess")
def main(argv: list[str] | None = None) -> int:
    from ls_video.quiet import quiet

    quiet()  # Lightning's product tips and a deprecation line from its own helpers, nothing of ours
    args = parse_args(argv)
    args.vae = shipped_path(args.vae)  # "assets/toy-base" from any folder, the wheel's copy too
    args.text_encoder = args.text_encoder and shipped_path(args.text_encoder)
    devices = int(args.devices) if args.devices.isdigit() else args.devices
    report = preprocess(args.videos, args.vae, args.out, args.num_frames, args.fps, args.frame_stride, args.size,
                        args.shard_size, args.batch_size, args.num_workers, devices, args.num_nodes,
                        args.accelerator, args.video_dir, clip_start=args.clip_start,
                        clips_per_video=args.clips_per_video, seed=args.seed, buckets=args.buckets,
                        frame_buckets=args.frame_buckets, text_encoder=args.text_encoder)
    if report["rank"] == 0:
        rate = report["clips_per_s_rank0"]
        print(f"wrote {report['written']} clips, skipped {report['skipped']} {report['skipped_by_reason']}"
              + (f", {rate:.1f} clips/s" if rate else "") + f" -> {args.out}")
        if "buckets" in report:
            print(bucket_summary(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
