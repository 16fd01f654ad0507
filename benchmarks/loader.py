"""Data-loader throughput: stream synthetic shards of 16x4x32x32 fp16 latents with 2 workers.

    python benchmarks/loader.py [--clips 4000] [--workers 2] [--batch-size 8]

Last line: ``clips_per_s=<N>`` (target >= 500 on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import tempfile
import time

from ls_video.datamodules import LatentVideoDataModule
from ls_video.datamodules.synthetic import write_synthetic_shards


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", type=int, default=4000, help="clips streamed in the timed pass")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    p.add_argument("--batch-size", type=int, default=8, help="clips per batch")
    p.add_argument("--shards", type=int, default=8, help="shards written")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        per_shard = 250
        write_synthetic_shards(tmp, args.shards, per_shard, shape=(16, 4, 32, 32))
        urls = f"{tmp}/shard-{{000000..{args.shards - 1:06d}}}.tar"
        dm = LatentVideoDataModule(urls, batch_size=args.batch_size, num_workers=args.workers,
                                   shuffle_buffer=500, resampled=True, epoch_length=args.clips)
        loader = dm.train_dataloader()
        it = iter(loader)
        for _ in range(5):  # warm up workers
            next(it)
        start, n = time.perf_counter(), 0
        for batch in it:
            n += batch["latents"].shape[0]
        elapsed = time.perf_counter() - start
    print(f"workers={args.workers} batch_size={args.batch_size} clips={n} seconds={elapsed:.2f}")
    print(f"clips_per_s={n / elapsed:.0f}")


if __name__ == "__main__":
    main()
