"""A small CLIP-style BPE tokenizer built offline from a word list.

Real runs load Stable Diffusion's CLIP tokenizer with ``from_pretrained``; tests and the toy world
cannot download one, so they build a ``CLIPTokenizer`` whose vocabulary is every printable ASCII
character plus whole-word merges for ``words``. Any text still tokenizes (unknown words fall back
to characters).
"""

from __future__ import annotations

import json
import os
import string
import tempfile
from collections.abc import Iterable

from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _word_merges(word: str) -> list[tuple[str, str]]:
    """Left-to-right merges that turn ``word`` into a single ``word</w>`` token."""
    parts = [*word[:-1], word[-1] + "</w>"]
    merges = []
    while len(parts) > 1:
        merges.append((parts[0], parts[1]))
        parts = [parts[0] + parts[1], *parts[2:]]
    return merges


def build_tokenizer(words: Iterable[str], model_max_length: int = 16) -> CLIPTokenizer:
    """A ``CLIPTokenizer`` over ASCII characters plus whole-word tokens for ``words``."""
    chars = [c for c in string.printable if not c.isspace()]
    vocab: dict[str, int] = {}
    for token in [*chars, *(c + "</w>" for c in chars)]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in sorted(set(w.lower() for w in words)):
        for a, b in _word_merges(word):
            if (a, b) not in merges:
                merges.append((a, b))
            vocab.setdefault(a + b, len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = os.path.join(tmp, "vocab.json")
        merges_file = os.path.join(tmp, "merges.txt")
        with open(vocab_file, "w") as f:
            json.dump(vocab, f)
        with open(merges_file, "w") as f:
            f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        return CLIPTokenizer(
            vocab_file, merges_file, model_max_length=model_max_length, pad_token=EOS,
            bos_token=BOS, eos_token=EOS, unk_token=EOS,
        )


def text_encoder_for(tokenizer: CLIPTokenizer, hidden_size: int = 32, **overrides) -> CLIPTextModel:
    """Two-layer CLIP text transformer (random init) sized to ``tokenizer``: the toy base's and the tests'."""
    config = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config.update(overrides)
    return CLIPTextModel(CLIPTextConfig(**config))
