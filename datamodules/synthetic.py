"""Synthetic latent shards (random latents, numbered captions) for tests and benchmarks."""

from __future__ import annotations

import json
import os

import numpy as np
import webdataset as wds

from ls_video.datamodules.shards import encode_sample
from ls_video.datamodules.text_cache import EMPTY_FILE


def write_synthetic_shards(out: str | os.PathLike, num_shards: int, per_shard: int, shape=(16, 4, 32, 32),
                           seed: int = 0, text_embeds: tuple[int, int] | None = None) -> list[str]:
    """Write ``num_shards`` shards of ``per_shard`` samples; captions are ``"clip {index}"``; with ``text_embeds``
    ``(L, D)``, random cached text-encoder states too (and an empty-prompt file, as ``preprocess --text-encoder``
    writes them, from a text encoder named ``synthetic``)."""
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    meta = {}
    if text_embeds is not None:
        meta = {"text_encoder": "synthetic", "text_encoder_fingerprint": "synthetic", "text_shape": list(text_embeds)}
        np.save(os.path.join(out, EMPTY_FILE), rng.standard_normal(text_embeds).astype(np.float16), allow_pickle=False)
    paths = []
    for k in range(num_shards):
        path = os.path.join(out, f"shard-{k:06d}.tar")
        with wds.TarWriter(path) as writer:
            for i in range(per_shard):
                index = k * per_shard + i
                latents = rng.standard_normal(shape).astype(np.float16)
                embeds = None if text_embeds is None else rng.standard_normal(text_embeds).astype(np.float16)
                writer.write(encode_sample(f"{index:09d}", latents, f"clip {index}", {"index": index, **meta},
                                           text_embeds=embeds))
        paths.append(path)
    return paths


def write_bucketed_shards(out: str | os.PathLike, buckets: dict[str, tuple[tuple[int, ...], int]], num_shards: int,
                          seed: int = 0) -> dict[str, str]:
    """Shards of mixed latent shapes, as ``preprocess --buckets`` writes them: ``buckets`` maps a bucket name to
    ``((F, C, h, w), clips)``; the clips are shuffled over ``num_shards`` shards, and ``index.json`` gets the
    bucket table. Returns each sample key's bucket."""
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [name for name, (_, count) in buckets.items() for _ in range(count)]
    names = [names[i] for i in rng.permutation(len(names))]
    keys: dict[str, str] = {}
    per_shard = -(-len(names) // num_shards)
    shards = []
    for k in range(num_shards):
        path = os.path.join(out, f"shard-{k:06d}.tar")
        with wds.TarWriter(path) as writer:
            for index in range(k * per_shard, min(len(names), (k + 1) * per_shard)):
                name, key = names[index], f"{index:09d}"
                latents = rng.standard_normal(buckets[name][0]).astype(np.float16)
                writer.write(encode_sample(key, latents, f"clip {index}", {"bucket": name}))
                keys[key] = name
        shards.append({"name": os.path.basename(path), "samples": sum(1 for v in keys if int(v) // per_shard == k)})
    table = {name: {"samples": count, "latent_shape": list(shape)} for name, (shape, count) in buckets.items()}
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump({"shards": shards, "num_samples": len(names), "buckets": table}, f, indent=2)
    return keys
