"""Tiny Stable-Diffusion-layout components (a few hundred thousand parameters) for tests.

Each preset is a plain function; :func:`save_tiny_base` writes them as a real diffusers folder
(``model_index.json``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``unet/``, ``scheduler/``) with
``StableDiffusionPipeline.save_pretrained``, exactly what a downloaded SD 1.x snapshot looks like.
"""

from __future__ import annotations

import os

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

from ls_video.components import Parts, save_sd_folder
from ls_video.toy.tokenizer import build_tokenizer, text_encoder_for
from ls_video.toy.world import TOY_WORDS


def tiny_unet(cross_attention_dim: int = 32, sample_size: int = 8, **overrides) -> UNet2DConditionModel:
    """Two-level SD-layout U-Net: cross-attention down/up blocks, a mid block, 4 latent channels."""
    config = dict(sample_size=sample_size, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                  layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=cross_attention_dim,
                  attention_head_dim=32, norm_num_groups=16)
    return UNet2DConditionModel(**{**config, **overrides})


def tiny_vae(**overrides) -> AutoencoderKL:
    """Two-level KL autoencoder: 3 -> 4 channels, spatial factor 2."""
    config = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
                  latent_channels=4, norm_num_groups=16, sample_size=16)
    return AutoencoderKL(**{**config, **overrides})


def tiny_scheduler(**overrides) -> DDIMScheduler:
    """SD's noise schedule (scaled-linear betas, 1000 steps, epsilon prediction)."""
    config = dict(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
    )
    config.update(overrides)
    return DDIMScheduler(**config)


def tiny_components(seed: int = 0) -> Parts:
    """The five parts with seeded random weights."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(TOY_WORDS)
    text_encoder = text_encoder_for(tokenizer)
    return Parts(
        vae=tiny_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=tiny_unet(cross_attention_dim=text_encoder.config.hidden_size),
        noise_scheduler=tiny_scheduler(),
    )


def save_tiny_base(out: str | os.PathLike, seed: int = 0) -> str:
    """Write a tiny random SD-layout base model to ``out`` and return the path."""
    return save_sd_folder(out, tiny_components(seed))


def save_tiny_clip(out: str | os.PathLike, words: list[str]) -> str:
    """A tiny random CLIP (text + vision, 32-d, 32x32 images) with a tokenizer over ``words``, saved as a
    transformers folder: the stand-in for CLIPSIM / CLIP-FID tests."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tok = build_tokenizer(words, model_max_length=16)
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    CLIPModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out)
    return str(out)
