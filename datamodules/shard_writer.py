"""Writing latent shards: each rank's samples into their WebDataset tar shards (atomically, with per-shard stats),
then ``index.json`` and ``report.json`` merged from those stats. Used by :mod:`ls_video.datamodules.preprocess`."""

from __future__ import annotations

import glob
import json
import os
from collections import Counter

import webdataset as wds
from lightning.pytorch.callbacks import BasePredictionWriter
from tqdm import tqdm

from ls_video.datamodules.buckets import bucket_report, count_bucket
from ls_video.datamodules.shards import encode_sample

SHARD_PATTERN = "shard-{:06d}.tar"


class ShardWriterCallback(BasePredictionWriter):
    """Writes each rank's samples into their shards (tmp file, then rename once the shard's last unit is
    done) with a clips/s bar. ``parts``: units per shard still to come."""

    def __init__(self, out: str, parts: dict[int, int], settings: dict, total: int | None, rank: int = 0) -> None:
        super().__init__(write_interval="batch")
        self.out, self.parts, self.settings, self.total, self.rank = out, dict(parts), settings, total, rank
        self.open: dict[int, tuple[wds.TarWriter, dict]] = {}
        self.bar: tqdm | None = None
        self.clips = 0  # clips written by this rank

    def _path(self, shard: int) -> str:
        return os.path.join(self.out, SHARD_PATTERN.format(shard))

    def _shard(self, shard: int) -> tuple[wds.TarWriter, dict]:
        if shard not in self.open:
            self.open[shard] = (wds.TarWriter(self._path(shard) + ".tmp"), {"samples": 0, "skipped": []})
        return self.open[shard]

    def _close(self, shard: int) -> None:
        writer, stats = self._shard(shard)
        writer.close()
        path = self._path(shard)
        with open(path + ".stats.json", "w") as f:
            json.dump({"shard": os.path.basename(path), "rank": self.rank, **stats}, f)
        os.replace(path + ".tmp", path)  # atomic: the final name only ever holds a complete shard
        del self.open[shard]

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        self.write(prediction)

    def write(self, prediction: dict) -> None:
        """Append one predicted batch (good latents, bad-video records) and close the shards it completes."""
        if self.bar is None:
            self.bar = tqdm(total=self.total, unit="clip", desc=f"encode rank {self.rank}", position=self.rank,
                            disable=self.total == 0)
        for i, g in enumerate(prediction["good"]):
            writer, stats = self._shard(g["shard"])
            latents = prediction["latents"][i]
            meta = {**self.settings, **g["meta"], "num_frames": int(latents.shape[0]),
                    "latent_shape": list(latents.shape)}
            embeds = prediction["text_embeds"][i] if "text_embeds" in prediction else None
            writer.write(encode_sample(g["key"], latents, g["caption"], meta, text_embeds=embeds))
            stats["samples"] += 1
            if "bucket" in meta:
                count_bucket(stats, meta["bucket"], meta["latent_shape"])
            self.clips += 1
        for b in prediction["bad"]:
            self._shard(b["shard"])[1]["skipped"].append({"source": b["source"], "reason": b["error"],
                                                          "detail": b["detail"]})
        for shard in prediction["done"]:
            self.parts[shard] -= 1
            if self.parts[shard] == 0:
                self._close(shard)
        self.bar.update(len(prediction["good"]) + len(prediction["bad"]))

    def on_predict_end(self, trainer, pl_module) -> None:
        self.finish()

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()


def write_index(out: str, settings: dict, write: bool = True) -> dict:
    """Merge the per-shard stats into ``index.json`` and ``report.json`` (when ``write``); returns the report."""
    stats = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, "shard-*.tar.stats.json")))]
    skipped = [s for st in stats for s in st["skipped"]]
    report = {"written": sum(st["samples"] for st in stats), "skipped": len(skipped),
              "skipped_by_reason": dict(Counter(s["reason"] for s in skipped)), "skipped_files": skipped}
    index = {"shards": [{"name": st["shard"], "samples": st["samples"]} for st in stats],
             "num_samples": report["written"], "settings": settings}
    report.update(bucket_report(stats, settings))  # bucketed jobs: clips per bucket, empty buckets
    index.update({k: v for k, v in report.items() if k == "buckets"})
    if write:
        with open(os.path.join(out, "index.json"), "w") as f:
            json.dump(index, f, indent=2)
        with open(os.path.join(out, "report.json"), "w") as f:
            json.dump(report, f, indent=2)
    return report
