"""Videos + captions -> WebDataset shards of VAE latents, as a Lightning predict loop.

    python -m datamodules.preprocess --videos SRC --vae PATH_OR_ID --out DIR [--num-frames 16]
        [--fps 8 | --frame-stride K] [--size 256] [--shard-size 1000] [--batch-size 8]
        [--devices N] [--num-nodes N]

Sample ``i`` of the sorted source list always goes to shard ``i // shard_size`` and shard ``k`` to
rank ``k % world_size``, so ranks write disjoint shards and a rerun skips shards that are already
complete (a shard appears under its final name only once fully written). Videos that cannot give a
clip are skipped and counted by reason in ``DIR/report.json``; ``DIR/index.json`` lists the shards.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from collections import Counter

import lightning as L
import numpy as np
import torch
import webdataset as wds
from lightning.pytorch.callbacks import BasePredictionWriter
from tqdm import tqdm

from datamodules.clips import ClipError, load_clip
from datamodules.shards import encode_sample
from datamodules.sources import Source, list_sources

SHARD_PATTERN = "shard-{:06d}.tar"


class ClipDataset(torch.utils.data.Dataset):
    """The pending clips of one rank; a bad video yields ``{"error": reason}`` instead of frames."""

    def __init__(self, items: list[tuple[int, Source]], num_frames: int, size: int, fps: float | None,
                 frame_stride: int | None) -> None:
        self.items, self.num_frames, self.size = items, num_frames, size
        self.fps, self.frame_stride = fps, frame_stride

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        index, source = self.items[i]
        try:
            frames, meta = load_clip(source.path, self.num_frames, self.size, self.fps, self.frame_stride)
            return {"index": index, "frames": frames, "caption": source.caption, "meta": meta}
        except ClipError as err:
            return {"index": index, "error": err.reason, "detail": str(err), "source": source.path}


def collate(items: list[dict]) -> dict:
    good = [it for it in items if "error" not in it]
    return {
        "frames": torch.stack([it["frames"] for it in good]) if good else None,
        "good": [{k: it[k] for k in ("index", "caption", "meta")} for it in good],
        "bad": [it for it in items if "error" in it],
    }


class VaeEncoder(L.LightningModule):
    """Frozen VAE; ``predict_step`` turns ``(B, F, 3, S, S)`` frames into unscaled latent means."""

    def __init__(self, vae_path: str) -> None:
        super().__init__()
        from diffusers import AutoencoderKL

        subfolder = "vae" if os.path.isdir(os.path.join(vae_path, "vae")) else None
        self.vae = AutoencoderKL.from_pretrained(vae_path, subfolder=subfolder).eval().requires_grad_(False)
        self.vae_path = vae_path

    @torch.no_grad()
    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        if batch["frames"] is None:
            return {"latents": None, **batch}
        b, f = batch["frames"].shape[:2]
        flat = batch["frames"].flatten(0, 1).to(self.device, self.vae.dtype)
        dtype = torch.bfloat16 if self.device.type == "cuda" else None
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            latents = self.vae.encode(flat).latent_dist.mean
        latents = latents.float().unflatten(0, (b, f)).cpu().numpy().astype(np.float16)
        return {"latents": latents, **batch}


class ShardWriterCallback(BasePredictionWriter):
    """Writes each rank's samples shard by shard (tmp file, then rename) with a clips/s bar."""

    def __init__(self, out: str, shard_size: int, settings: dict, total: int) -> None:
        super().__init__(write_interval="batch")
        self.out, self.shard_size, self.settings, self.total = out, shard_size, settings, total
        self.shard: int | None = None
        self.writer: wds.TarWriter | None = None
        self.count = 0
        self.skipped: list[dict] = []
        self.bar: tqdm | None = None

    def _open(self, shard: int) -> None:
        self._close()
        self.shard = shard
        self.writer = wds.TarWriter(self._path(shard) + ".tmp")
        self.count, self.skipped = 0, []

    def _path(self, shard: int) -> str:
        return os.path.join(self.out, SHARD_PATTERN.format(shard))

    def _close(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        path = self._path(self.shard)
        with open(path + ".stats.json", "w") as f:
            json.dump({"shard": os.path.basename(path), "samples": self.count, "skipped": self.skipped}, f)
        os.replace(path + ".tmp", path)  # atomic: the final name only ever holds a complete shard
        self.writer = None

    def _shard_for(self, index: int) -> None:
        shard = index // self.shard_size
        if shard != self.shard:
            self._open(shard)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        self.write(prediction, trainer.global_rank)

    def write(self, prediction: dict, rank: int = 0) -> None:
        """Append one predicted batch (good latents and bad-video records) to the current shard."""
        if self.bar is None:
            self.bar = tqdm(total=self.total, unit="clip", desc=f"encode rank {rank}", position=rank,
                            disable=self.total == 0)
        events = [(g["index"], "good", i) for i, g in enumerate(prediction["good"])]
        events += [(b["index"], "bad", b) for b in prediction["bad"]]
        for index, kind, item in sorted(events, key=lambda e: e[0]):
            self._shard_for(index)
            if kind == "good":
                g = prediction["good"][item]
                meta = {**g["meta"], **self.settings, "num_frames": int(prediction["latents"].shape[1])}
                self.writer.write(encode_sample(f"{index:09d}", prediction["latents"][item], g["caption"], meta))
                self.count += 1
            else:
                self.skipped.append({"source": item["source"], "reason": item["error"], "detail": item["detail"]})
        self.bar.update(len(events))

    def on_predict_end(self, trainer, pl_module) -> None:
        self.finish()

    def finish(self) -> None:
        self._close()
        if self.bar is not None:
            self.bar.close()


def pending_items(sources: list[Source], out: str, shard_size: int, rank: int, world: int) -> list:
    """(index, source) pairs of this rank's shards that are not complete on disk yet."""
    items = []
    for index, source in enumerate(sources):
        shard = index // shard_size
        if shard % world == rank and not os.path.exists(os.path.join(out, SHARD_PATTERN.format(shard))):
            items.append((index, source))
    return items


def write_index(out: str, settings: dict) -> dict:
    """Merge the per-shard stats into ``index.json`` and ``report.json``; returns the report."""
    stats = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, "shard-*.tar.stats.json")))]
    skipped = [s for st in stats for s in st["skipped"]]
    report = {"written": sum(st["samples"] for st in stats), "skipped": len(skipped),
              "skipped_by_reason": dict(Counter(s["reason"] for s in skipped)), "skipped_files": skipped}
    index = {"shards": [{"name": st["shard"], "samples": st["samples"]} for st in stats],
             "num_samples": report["written"], "settings": settings}
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump(index, f, indent=2)
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def preprocess(videos: str, vae: str, out: str, num_frames: int = 16, fps: float | None = 8,
               frame_stride: int | None = None, size: int = 256, shard_size: int = 1000,
               batch_size: int = 8, num_workers: int = 2, devices: int | str = 1, num_nodes: int = 1,
               accelerator: str = "auto", video_dir: str | None = None, in_process: bool = False) -> dict:
    """Run the job (see the module docstring) and return the merged report.

    ``in_process`` runs the same predict step and writer in a plain loop on this process's device,
    without a ``Trainer`` (for callers that already run inside one, e.g. ``ToyDataModule.prepare_data``).
    """
    if frame_stride is not None:
        fps = None
    if num_frames < 1 or size < 1 or shard_size < 1 or batch_size < 1:
        raise ValueError("num_frames, size, shard_size and batch_size must be >= 1")
    sources = list_sources(videos, video_dir)
    os.makedirs(out, exist_ok=True)
    model = VaeEncoder(vae)
    if in_process:
        return _run_in_process(model, sources, out, num_frames, fps, frame_stride, size, shard_size, batch_size,
                               num_workers)
    trainer = L.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False)
    settings = _settings(model, size, fps, frame_stride)
    rank, world = trainer.global_rank, trainer.world_size
    items = pending_items(sources, out, shard_size, rank, world)
    dataset = ClipDataset(items, num_frames, size, fps, frame_stride)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                                         collate_fn=collate, persistent_workers=False)
    writer = ShardWriterCallback(out, shard_size, settings, len(items))
    trainer.callbacks.append(writer)
    start = time.perf_counter()
    if items:
        trainer.predict(model, loader, return_predictions=False)
    elapsed = time.perf_counter() - start
    trainer.strategy.barrier()
    return _report(out, settings, num_frames, shard_size, len(items), elapsed)


def _report(out: str, settings: dict, num_frames: int, shard_size: int, encoded: int, elapsed: float) -> dict:
    """Write index/report for the whole folder and add this rank's throughput."""
    report = write_index(out, {**settings, "num_frames": num_frames, "shard_size": shard_size})
    report["clips_per_s_rank0"] = encoded / elapsed if encoded and elapsed > 0 else None
    return report


def _settings(model: VaeEncoder, size: int, fps: float | None, frame_stride: int | None) -> dict:
    return dict(vae=model.vae_path, scaling_factor=float(model.vae.config.scaling_factor),
                shift_factor=getattr(model.vae.config, "shift_factor", None), scaled=False, size=size, fps=fps,
                frame_stride=frame_stride)


def _run_in_process(model: VaeEncoder, sources: list[Source], out: str, num_frames: int, fps: float | None,
                    frame_stride: int | None, size: int, shard_size: int, batch_size: int, num_workers: int) -> dict:
    settings = _settings(model, size, fps, frame_stride)
    items = pending_items(sources, out, shard_size, 0, 1)
    loader = torch.utils.data.DataLoader(ClipDataset(items, num_frames, size, fps, frame_stride),
                                         batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
    writer = ShardWriterCallback(out, shard_size, settings, len(items))
    start = time.perf_counter()
    for i, batch in enumerate(loader):
        writer.write(model.predict_step(batch, i))
    writer.finish()
    return _report(out, settings, num_frames, shard_size, len(items), time.perf_counter() - start)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m datamodules.preprocess", description=__doc__.split("\n")[0])
    p.add_argument("--videos", required=True, help="folder of videos + .txt captions, or a .csv/.jsonl of path,caption")
    p.add_argument("--video-dir", default=None, help="folder the CSV's paths (or WebVid videoids) are relative to")
    p.add_argument("--vae", required=True, help="diffusers base folder/id (its vae/ is used) or a VAE folder")
    p.add_argument("--out", required=True, help="output folder for shards, index.json and report.json")
    p.add_argument("--num-frames", type=int, default=16, help="frames per clip")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--fps", type=float, default=8, help="resample clips to this frame rate (default 8)")
    g.add_argument("--frame-stride", type=int, default=None, help="take every K-th frame instead of --fps")
    p.add_argument("--size", type=int, default=256, help="square side in pixels after resize + center crop")
    p.add_argument("--shard-size", type=int, default=1000, help="clips per shard")
    p.add_argument("--batch-size", type=int, default=8, help="clips encoded together")
    p.add_argument("--num-workers", type=int, default=2, help="decoding worker processes per device")
    p.add_argument("--devices", default="1", help="devices per node (Lightning syntax: 1, 4, auto)")
    p.add_argument("--num-nodes", type=int, default=1, help="number of nodes")
    p.add_argument("--accelerator", default="auto", help="cpu, gpu, auto")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    devices = int(args.devices) if args.devices.isdigit() else args.devices
    try:
        report = preprocess(args.videos, args.vae, args.out, args.num_frames, args.fps, args.frame_stride, args.size,
                            args.shard_size, args.batch_size, args.num_workers, devices, args.num_nodes,
                            args.accelerator, args.video_dir)
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"preprocess: error: {err}", file=sys.stderr)
        return 2
    rate = report["clips_per_s_rank0"]
    print(f"wrote {report['written']} clips, skipped {report['skipped']} {report['skipped_by_reason']}"
          + (f", {rate:.1f} clips/s" if rate else "") + f" -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
