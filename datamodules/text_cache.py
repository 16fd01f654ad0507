"""Cached text embeddings: the frozen text encoder's output per caption, written into the shards once.

``ls-video preprocess --text-encoder BASE`` stores each caption's ``(L, D)`` states as ``text_embeds.npy`` (fp16)
and the empty prompt's as ``empty_text_embeds.npy`` next to the shards (caption dropout's target). Training with
``model.cached_text_embeddings: true`` then never loads the text encoder: the datamodule adds the empty-prompt
embedding to every batch that carries ``text_embeds`` (``batch["empty_text_embeds"]``), and checks before step 1
that the shards' text encoder is the model's (as :mod:`ls_video.datamodules.vae_check` does for the VAE).
"""

from __future__ import annotations

import io
import logging
import os

import numpy as np
import torch

from ls_video.datamodules.storage import RemoteOptions, open_shard
from ls_video.errors import UsageError

log = logging.getLogger(__name__)
EMPTY_FILE = "empty_text_embeds.npy"


class TextCache:
    """The text encoder and tokenizer of a base, encoding captions to fp16 arrays."""

    def __init__(self, base: str) -> None:
        from transformers import AutoTokenizer

        from ls_video.components import freeze, text_encoder_class
        from ls_video.hub import resolve

        self.base = base
        local = resolve(base, what="text encoder base")  # a folder or a Hub id
        self.tokenizer = AutoTokenizer.from_pretrained(local, subfolder="tokenizer")
        self.encoder = text_encoder_class(local).from_pretrained(local, subfolder="text_encoder")
        freeze(self.encoder)

    def to(self, device: torch.device) -> TextCache:
        self.encoder.to(device)
        return self

    def __call__(self, captions: list[str]) -> np.ndarray:
        """``(N, L, D)`` fp16 states of ``captions``."""
        from ls_video.text import encode_prompts

        return encode_prompts(list(captions), self.tokenizer, self.encoder).float().cpu().numpy().astype(np.float16)

    def settings(self) -> dict:
        """What the shards record about the text encoder (checked against the model before training)."""
        from ls_video.components import fingerprint

        return {"text_encoder": self.base, "text_encoder_fingerprint": fingerprint(self.encoder),
                "text_shape": [int(self.tokenizer.model_max_length), int(self.encoder.config.hidden_size)]}

    def write_empty(self, out: str) -> None:
        np.save(os.path.join(out, EMPTY_FILE), self([""])[0], allow_pickle=False)


def read_empty(url: str, remote: RemoteOptions | None = None) -> torch.Tensor | None:
    """The ``empty_text_embeds.npy`` next to shard ``url`` (a local path or http(s) URL, opened as the shards are,
    with ``remote``'s timeouts and retries); ``None`` for ``pipe:`` streams or when it is missing."""
    if url.startswith("pipe:"):
        return None
    folder = url.rsplit("/", 1)[0] if "/" in url else "."
    try:
        with open_shard(f"{folder}/{EMPTY_FILE}", remote) as f:
            data = f.read()
    except OSError:  # ShardReadError included
        return None
    return torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False))[None]


def check_text(meta: dict, module: torch.nn.Module, empty: torch.Tensor | None, cached: bool) -> None:
    """Shards with cached text embeddings against the model: the same text encoder (fingerprint, when the model
    has loaded it) and the width its U-Net attends to; with ``cached`` training, the empty-prompt file must exist."""
    from ls_video.components import fingerprint

    if "text_encoder_fingerprint" not in meta:
        if cached:
            raise UsageError("model.cached_text_embeddings is on but the shards carry no text embeddings; "
                             "preprocess with --text-encoder BASE")
        return
    width = int(module.unet.config.cross_attention_dim)
    if meta["text_shape"][1] != width:
        raise UsageError(f"the shards' text embeddings are {meta['text_shape'][1]} wide (text encoder "
                         f"{meta['text_encoder']!r}) but the U-Net attends to {width}; preprocess with the model's "
                         "text encoder")
    encoder = getattr(module, "text_encoder", None)
    if encoder is not None and fingerprint(encoder) != meta["text_encoder_fingerprint"]:
        raise UsageError(f"the shards' text embeddings were made by text encoder {meta['text_encoder']!r}, not the "
                         "model's; preprocess with the model's text encoder (--text-encoder)")
    if cached and empty is None:
        raise UsageError(f"model.cached_text_embeddings is on but {EMPTY_FILE} is missing next to the shards "
                         "(caption dropout needs it; preprocess writes it with --text-encoder)")
