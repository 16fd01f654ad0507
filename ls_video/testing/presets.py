"""Real-size architectures (random init) for benchmarks and parameter counts."""

from __future__ import annotations

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from ls_video.components import Parts

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.18215,
)
SD15_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      clip_sample=False, steps_offset=1)


def sd15_unet(**overrides) -> UNet2DConditionModel:
    """The Stable Diffusion 1.5 U-Net architecture with random weights (860M parameters)."""
    return UNet2DConditionModel(**{**SD15_UNET, **overrides})


def sd15_components(words: tuple[str, ...] = ("a", "red", "square", "moving", "left")) -> Parts:
    """Every SD-1.5-sized component with random weights (VAE 84M, CLIP ViT-L text encoder 123M,
    U-Net 860M), a 77-token tokenizer over ``words``, and the SD-1.5 noise schedule (DDPM; samplers are made
    from its config)."""
    from ls_video.toy.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(words, model_max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    return Parts(vae=AutoencoderKL(**SD15_VAE), text_encoder=text_encoder, tokenizer=tokenizer, unet=sd15_unet(),
                 noise_scheduler=DDPMScheduler(**SD15_SCHEDULER))
