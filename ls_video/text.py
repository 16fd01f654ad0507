"""Prompt -> text embeddings, shared by training and sampling."""

from __future__ import annotations

import warnings

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@torch.no_grad()
def encode_prompts(
    prompts: list[str], tokenizer: PreTrainedTokenizerBase, text_encoder: PreTrainedModel
) -> torch.Tensor:
    """``(N, L, D)`` last hidden states for ``prompts``, padded to the tokenizer's max length.

    Prompts longer than the tokenizer's limit are truncated with a warning (as Stable Diffusion does).
    """
    max_length = tokenizer.model_max_length
    tokens = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                       return_tensors="pt")
    full = tokenizer(prompts, padding="longest", return_tensors="pt").input_ids
    if full.shape[-1] > max_length:
        warnings.warn(f"a prompt is longer than the tokenizer limit of {max_length} tokens; truncated",
                      stacklevel=2)
    device = next(text_encoder.parameters()).device
    return text_encoder(tokens.input_ids.to(device))[0]
