"""Build the toy text-to-image base model: the stand-in for Stable Diffusion on these machines.

    python -m ls_video.toy.make_base --out assets/toy-base [--vae-steps 1500] [--unet-steps 3000]

Short plain-PyTorch loops, in the order Stable Diffusion's parts were made:
1. a small ``AutoencoderKL`` (32x32 RGB -> 8x8x4 latents) on toy frames, ``scaling_factor`` set from data;
2. a small CLIP text encoder + word-level tokenizer, pretrained so that every hidden state tells
   its own token and the words before it (the stand-in for CLIP's pretraining: end-of-text and
   padding states summarise the caption). Without it, words that never occur in image captions
   ("left", "right", ...) leave the states the U-Net attends to unchanged, and a frozen encoder
   cannot tell the video model which way to move;
3. an image ``UNet2DConditionModel`` trained on single frames (``"a {color} {shape}"``) with the
   text encoder frozen (epsilon prediction, caption dropout for guidance);
4. saved as a Stable Diffusion folder (``model_index.json``, ``vae/``, ``text_encoder/``,
   ``tokenizer/``, ``unet/``, ``scheduler/``) and checked by sampling every prompt.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from tqdm import tqdm

from ls_video.components import Parts, load_vae, save_sd_folder
from ls_video.errors import command
from ls_video.objective import DiffusionObjective, ObjectiveConfig
from ls_video.text import encode_prompts
from ls_video.toy.loop import train_steps
from ls_video.toy.tokenizer import build_tokenizer, text_encoder_for
from ls_video.toy.world import COLORS, SHAPES, TOY_WORDS, ToyWorld
from ls_video.vae_space import pixels_to_vae


@dataclass
class ToyBaseConfig:
    """Sizes and budgets of the toy base (defaults: about 6 minutes on 2 CPU cores)."""

    size: int = 32  # frame side in pixels (latents are size / 8)
    object_size: int = 8  # shape side / diameter in pixels
    vae_steps: int = 1500  # stage 1: VAE reconstruction steps, batches of vae_batch frames
    vae_batch: int = 32
    text_steps: int = 600  # stage 2: text-encoder pretraining steps (all captions each step)
    unet_steps: int = 4000  # stage 3: image U-Net steps, batches of unet_batch frames
    unet_batch: int = 32
    unet_channels: tuple[int, int] = (32, 64)  # block_out_channels of the U-Net
    text_dim: int = 64  # text encoder width = the U-Net's cross_attention_dim
    lr: float = 1e-3  # peak AdamW learning rate of every stage
    num_images: int = 20000  # rendered training frames
    seed: int = 0


def toy_vae(size: int) -> AutoencoderKL:
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 64),
                         layers_per_block=1, latent_channels=4, norm_num_groups=16, sample_size=size)


def toy_unet(channels: tuple[int, int], text_dim: int, latent_size: int) -> UNet2DConditionModel:
    # attention_head_dim is diffusers' (SD-legacy) name for the number of heads: one head is
    # cheapest on CPU.
    return UNet2DConditionModel(sample_size=latent_size, in_channels=4, out_channels=4,
                                block_out_channels=channels, layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=text_dim, attention_head_dim=1, norm_num_groups=16)


def toy_scheduler() -> DDIMScheduler:
    return DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                         clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


def train_vae(images: torch.Tensor, cfg: ToyBaseConfig) -> AutoencoderKL:
    """Reconstruction (MSE) + a tiny KL term, so latents stay a smooth, well-scaled space."""
    vae = toy_vae(cfg.size)
    gen = torch.Generator().manual_seed(cfg.seed)

    def loss() -> torch.Tensor:
        x = images[torch.randint(len(images), (cfg.vae_batch,), generator=gen)]
        post = vae.encode(x).latent_dist
        return F.mse_loss(vae.decode(post.sample(generator=gen)).sample, x) + 1e-6 * post.kl().mean()

    train_steps("toy base 1/3: VAE", cfg.vae_steps, torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0),
                loss)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        means = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in images[:2048].split(256)])
    vae.register_to_config(scaling_factor=float(1.0 / means.std()))
    return vae


def pretrain_text_encoder(tokenizer, cfg: ToyBaseConfig):
    """CLIP-like contextual states: each position must reveal its own token and every word so far.

    Two linear probes read the hidden states: one recovers the token, one the bag of words of the
    prefix (so the end-of-text and padding states summarise the whole caption, as CLIP's do).
    """
    from ls_video.toy.world import all_prompts

    text_encoder = text_encoder_for(tokenizer, hidden_size=cfg.text_dim)
    captions = all_prompts() + [f"a {c} {s}" for c in COLORS for s in SHAPES] + [""]
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    vocab = len(tokenizer)
    prefix_bags = torch.zeros(*ids.shape, vocab)
    prefix_bags.scatter_(2, ids[..., None], 1.0)
    prefix_bags = prefix_bags.cummax(dim=1).values  # words seen up to each position
    token_probe = torch.nn.Linear(cfg.text_dim, vocab)
    bag_probe = torch.nn.Linear(cfg.text_dim, vocab)
    params = [*text_encoder.parameters(), *token_probe.parameters(), *bag_probe.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    bar = tqdm(range(cfg.text_steps), desc="toy base 2/3: text encoder", unit="step")
    for _ in bar:
        states = text_encoder(ids)[0]
        loss = F.cross_entropy(token_probe(states).flatten(0, 1), ids.flatten())
        loss = loss + F.binary_cross_entropy_with_logits(bag_probe(states), prefix_bags)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return text_encoder.eval().requires_grad_(False)


def train_unet(latents: torch.Tensor, captions: list[str], tokenizer, text_encoder, vae_config, cfg: ToyBaseConfig):
    """Image U-Net trained as a latent diffusion model on the frozen text encoder (the project's
    :class:`~ls_video.objective.DiffusionObjective`: epsilon target, caption dropout 0.1); ``latents`` are raw."""
    unet = toy_unet(cfg.unet_channels, cfg.text_dim, latents.shape[-1])
    objective = DiffusionObjective(toy_scheduler(), ObjectiveConfig(caption_dropout=0.1), vae_config)
    with torch.no_grad():  # frozen: encode each caption once
        table = encode_prompts(captions + [""], tokenizer, text_encoder)
    context, empty = table[:-1], table[-1:]
    gen = torch.Generator().manual_seed(cfg.seed + 1)

    def loss() -> torch.Tensor:
        idx = torch.randint(len(latents), (cfg.unet_batch,), generator=gen)
        ctx = objective.drop_captions(context[idx], empty, gen)
        return objective.loss(lambda noisy, t: unet(noisy, t, ctx).sample, latents[idx], gen)

    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=1e-2)
    train_steps("toy base 3/3: image U-Net", cfg.unet_steps, opt, loss, clip_norm=1.0)
    return unet.eval().requires_grad_(False)


def check_base(path: str, seeds: int = 4, steps: int = 25) -> dict:
    """Sample every ``"a {color} {shape}"`` prompt ``seeds`` times; colour and shape accuracy."""
    from ls_video.pipeline import LatentShiftPipeline
    from ls_video.toy.check import sample_and_score

    prompts = [f"a {c} {s}" for c in COLORS for s in SHAPES] * seeds
    result, _ = sample_and_score(LatentShiftPipeline.from_pretrained(path), prompts, range(len(prompts)),
                                 num_inference_steps=steps)
    return {k: result[k] for k in ("n", "color_acc", "shape_acc", "consistency")}


def make_base(out: str, cfg: ToyBaseConfig, vae_from: str | None = None) -> dict:
    """Build, save and check the toy base; returns the check's accuracies."""
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    world = ToyWorld(size=cfg.size, num_frames=2, object_size=cfg.object_size, min_travel=0.0)
    frames, captions = world.images(cfg.num_images, "train", seed=cfg.seed)
    images = pixels_to_vae(torch.from_numpy(frames))
    if vae_from:
        vae = load_vae(vae_from)
    else:
        vae = train_vae(images, cfg)
    with torch.no_grad():
        latents = torch.cat([vae.encode(c).latent_dist.mean for c in images.split(512)])  # raw: the objective scales
    tokenizer = build_tokenizer(TOY_WORDS, model_max_length=8)
    text_encoder = pretrain_text_encoder(tokenizer, cfg)
    unet = train_unet(latents, captions, tokenizer, text_encoder, vae.config, cfg)
    save_sd_folder(out, Parts(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              noise_scheduler=toy_scheduler()))
    check = check_base(out)
    check["build_seconds"] = round(time.perf_counter() - start, 1)
    return check


@command("ls-video make-toy-base")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ls-video make-toy-base", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder (Stable Diffusion layout)")
    defaults = ToyBaseConfig()
    p.add_argument("--vae-from", default=None, help="reuse the vae/ of an existing base instead of training one")
    for name in ("vae_steps", "text_steps", "unet_steps", "vae_batch", "unet_batch", "num_images", "seed"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name),
                       help=f"default {getattr(defaults, name)}")
    p.add_argument("--lr", type=float, default=defaults.lr, help=f"default {defaults.lr}")
    args = p.parse_args(argv)
    torch.set_num_threads(min(torch.get_num_threads(), 4))
    cfg = ToyBaseConfig(vae_steps=args.vae_steps, text_steps=args.text_steps, unet_steps=args.unet_steps,
                        vae_batch=args.vae_batch, unet_batch=args.unet_batch, num_images=args.num_images,
                        seed=args.seed, lr=args.lr)
    check = make_base(args.out, cfg, args.vae_from)
    print(f"toy base written to {args.out}: {check}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
