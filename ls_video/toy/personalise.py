"""A personalised toy model: the toy base taught two concepts the video fine-tuning never sees (issue #19).

    python -m ls_video.toy.personalise --base assets/toy-base --out outputs/personal [--steps 1500]

The stand-in for a DreamBooth / textual-inversion fine-tune of Stable Diffusion that users want to
animate with a motion file (``ls_video.commands.transfer``). It fine-tunes the base on single-frame *images*
(``"a {color} {shape}"``) of every colour x shape of the extended world: purple (RGB 150, 60, 200)
and an apex-up triangle are new, the 4 old colours and 2 old shapes come along (8 of the 15
combinations) so nothing is forgotten (DreamBooth's prior preservation, here from the world itself).

The base's word-level tokenizer has no "purple" or "triangle" (it would spell them in characters and
truncate the caption at 8 tokens), so, as textual inversion does, the tokenizer gets two added tokens
and the text encoder two new embedding rows (initialised from "red"+"blue" and "square"), trained with
the U-Net. Everything else of the text encoder stays frozen: old captions encode bit-identically, so the
direction words the video fine-tuning learned to read ("left", "up", ...) mean the same to this model.
A motion file only touches the U-Net; the personalised model keeps its own tokenizer and text encoder.

The toy VAE, unlike Stable Diffusion's, was trained on the 8 old concepts only and cannot draw the new
ones: it decodes a purple object green and a triangle as a disc (``personalise.json``'s
``reconstruction_before``). Its encoder still tells them apart, so the first stage fine-tunes the VAE
*decoder* alone on the extended world: the encoder is frozen, every image keeps its latent, and the
U-Net (and any motion delta) works in exactly the base's latent space.

Writes a Stable Diffusion folder (like ``assets/toy-base``) and ``personalise.json``: steps, steps/s and
a check that samples every image prompt (colour / shape accuracy, old and new concepts apart).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from ls_video.components import PART_NAMES, Parts, freeze, load_components, save_sd_folder
from ls_video.errors import UsageError
from ls_video.objective import DiffusionObjective, ObjectiveConfig
from ls_video.toy.loop import train_steps
from ls_video.toy.world import ALL_COLORS, ALL_SHAPES, NEW_COLORS, NEW_SHAPES, ToyWorld
from ls_video.vae_space import pixels_to_vae

# new word -> old words whose embeddings' mean starts it
NEW_WORDS = {"purple": ("red", "blue"), "triangle": ("square",)}


@dataclass
class PersonaliseConfig:
    """Budget of the personalisation (defaults: a few minutes on one CPU thread)."""

    steps: int = 1500
    batch: int = 32
    decoder_steps: int = 600          # VAE decoder on the extended world (0: keep the base's decoder)
    decoder_batch: int = 16
    decoder_lr: float = 1e-3
    lr: float = 3e-4                  # U-Net (the base was trained at 1e-3)
    embedding_lr: float = 3e-3        # the two new token embeddings
    num_images: int = 6000
    caption_dropout: float = 0.1
    size: int = 32
    object_size: int = 8
    seed: int = 0
    reconstruction_images: int = 150  # held-out images for the VAE's before / after reconstruction check


def extend_text_side(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel) -> list[int]:
    """Add :data:`NEW_WORDS` as tokens and embedding rows (old rows untouched); returns the new ids."""
    old_embeddings = text_encoder.get_input_embeddings().weight.detach().clone()
    init = {}
    for word, sources in NEW_WORDS.items():
        ids = [tokenizer(src, add_special_tokens=False).input_ids for src in sources]
        if any(len(i) != 1 for i in ids):
            raise UsageError(f"the base tokenizer does not know {sources} as single tokens")
        init[word] = old_embeddings[[i[0] for i in ids]].mean(0)
    missing = [w for w in NEW_WORDS if len(tokenizer(w, add_special_tokens=False).input_ids) != 1]
    if not missing:
        return tokenizer.convert_tokens_to_ids(list(NEW_WORDS))  # already extended
    tokenizer.add_tokens(missing)
    text_encoder.resize_token_embeddings(len(tokenizer))
    weight = text_encoder.get_input_embeddings().weight
    new_ids = tokenizer.convert_tokens_to_ids(missing)
    with torch.no_grad():
        weight[: len(old_embeddings)] = old_embeddings
        for word, i in zip(missing, new_ids, strict=True):
            weight[i] = init[word]
    return new_ids


def load_base(base: str) -> Parts:
    """The base's parts (:func:`ls_video.components.load_components`; VAE and text encoder frozen)."""
    parts = load_components(base)
    freeze(parts["text_encoder"])
    return parts


def personalise(base: str, out: str, cfg: PersonaliseConfig, check_seeds: int = 4) -> dict:
    """Fine-tune, save and check; returns the report written to ``out/personalise.json``."""
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    parts = load_base(base)
    vae, text_encoder, tokenizer, unet, scheduler = (parts[k] for k in PART_NAMES)
    new_ids = extend_text_side(tokenizer, text_encoder)
    world = ToyWorld(size=cfg.size, num_frames=2, object_size=cfg.object_size, min_travel=0.0)
    frames, captions = world.images(cfg.num_images, "train", seed=cfg.seed + 19, colors=list(ALL_COLORS),
                                    shapes=ALL_SHAPES)
    images = pixels_to_vae(torch.from_numpy(frames))
    with torch.no_grad():  # raw latents: the objective scales them
        latents = torch.cat([vae.encode(c).latent_dist.mean for c in images.split(512)])
    report: dict = {"base": base, "config": asdict(cfg)}
    report["reconstruction_before"] = reconstruction_accuracy(vae, world, cfg.seed, cfg.reconstruction_images)
    if cfg.decoder_steps:
        decoder_start = time.perf_counter()
        finetune_decoder(vae, latents, images, cfg)
        report["decoder_steps_per_s"] = round(cfg.decoder_steps / (time.perf_counter() - decoder_start), 2)
        report["reconstruction_after"] = reconstruction_accuracy(vae, world, cfg.seed, cfg.reconstruction_images)
    train_start = time.perf_counter()
    train_unet_and_words(unet, text_encoder, tokenizer, new_ids, latents, captions, scheduler, vae, cfg)
    train_seconds = time.perf_counter() - train_start
    unet.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)
    save_sd_folder(out, parts)
    report.update({"new_token_ids": new_ids, "train_seconds": round(train_seconds, 1),
                   "steps_per_s": round(cfg.steps / train_seconds, 2) if cfg.steps else None,
                   "check": check_images(out, seeds=check_seeds) if check_seeds else None,
                   "seconds": round(time.perf_counter() - start, 1)})
    with open(os.path.join(out, "personalise.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def train_unet_and_words(unet: UNet2DConditionModel, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                         new_ids: list[int], latents: torch.Tensor, captions: list[str], scheduler,
                         vae: AutoencoderKL, cfg: PersonaliseConfig) -> None:
    """The U-Net and the new words' embedding rows on the base's objective (epsilon, caption dropout);
    every other row of the frozen text encoder stays as it was (checked)."""
    ids = tokenizer(captions + [""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    ids, empty_ids = ids[:-1], ids[-1:]
    embedding = text_encoder.get_input_embeddings().weight
    frozen_rows = embedding.detach()[: min(new_ids)].clone()
    embedding.requires_grad_(True)
    row_mask = torch.zeros(len(embedding), 1)
    row_mask[new_ids] = 1.0
    embedding.register_hook(lambda g: g * row_mask)  # only the new words' rows learn
    with torch.no_grad():
        empty = text_encoder(empty_ids)[0]  # the empty prompt holds no new word: constant
    objective = DiffusionObjective(scheduler, ObjectiveConfig(caption_dropout=cfg.caption_dropout), vae.config)
    gen = torch.Generator().manual_seed(cfg.seed + 2)

    def loss() -> torch.Tensor:
        idx = torch.randint(len(latents), (cfg.batch,), generator=gen)
        context = objective.drop_captions(text_encoder(ids[idx])[0], empty, gen)
        return objective.loss(lambda noisy, t: unet(noisy, t, context).sample, latents[idx], gen)

    unet.train()
    opt = torch.optim.AdamW([{"params": list(unet.parameters()), "lr": cfg.lr, "weight_decay": 1e-2},
                             {"params": [embedding], "lr": cfg.embedding_lr, "weight_decay": 0.0}])
    train_steps("personalise 2/2: U-Net + 2 embeddings", cfg.steps, opt, loss, clip_norm=1.0)
    with torch.no_grad():
        if not torch.equal(embedding[: len(frozen_rows)], frozen_rows):
            raise RuntimeError("old token embeddings moved")


def finetune_decoder(vae: AutoencoderKL, latents: torch.Tensor, images: torch.Tensor, cfg: PersonaliseConfig) -> None:
    """Reconstruction loss through ``post_quant_conv`` + ``decoder`` from the frozen encoder's raw latents."""
    params = [*vae.post_quant_conv.parameters(), *vae.decoder.parameters()]
    for param in params:
        param.requires_grad_(True)
    gen = torch.Generator().manual_seed(cfg.seed + 1)

    def loss() -> torch.Tensor:
        idx = torch.randint(len(images), (cfg.decoder_batch,), generator=gen)
        return F.mse_loss(vae.decode(latents[idx]).sample, images[idx])

    train_steps("personalise 1/2: VAE decoder", cfg.decoder_steps,
                torch.optim.AdamW(params, lr=cfg.decoder_lr, weight_decay=0.0), loss, warmup=20)
    vae.eval().requires_grad_(False)


def reconstruction_accuracy(vae: AutoencoderKL, world: ToyWorld, seed: int, n: int = 150) -> dict:
    """Colour / shape accuracy of ``decode(encode(image))`` on held-out images, new and old concepts apart."""
    from ls_video.metrics.toy import analyze_video

    frames, captions = world.images(n, "val", seed=seed, colors=list(ALL_COLORS), shapes=ALL_SHAPES)
    x = pixels_to_vae(torch.from_numpy(frames))
    with torch.no_grad():
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample
    rec = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    rows: dict[str, list[tuple[bool, bool]]] = {"new": [], "old": []}
    for frame, caption in zip(rec, captions, strict=True):
        _, color, shape = caption.split()
        got = analyze_video(frame[None])
        rows["new" if color in NEW_COLORS or shape in NEW_SHAPES else "old"].append(
            (got["color"] == color, got["shape"] == shape))
    return {k: {"n": len(v), "color_acc": sum(c for c, _ in v) / max(1, len(v)),
                "shape_acc": sum(s for _, s in v) / max(1, len(v))} for k, v in rows.items()}


def image_prompts(new: bool) -> list[str]:
    return [f"a {c} {s}" for c in ALL_COLORS for s in ALL_SHAPES if (c in NEW_COLORS or s in NEW_SHAPES) == new]


def check_images(path: str, seeds: int = 4, steps: int = 25) -> dict:
    """Sample every ``"a {color} {shape}"`` image prompt ``seeds`` times: colour / shape accuracy, new and old."""
    from ls_video.pipeline import LatentShiftPipeline
    from ls_video.toy.check import sample_and_score

    pipe = LatentShiftPipeline.from_pretrained(path)
    out = {}
    for name, new in (("new", True), ("old", False)):
        prompts = image_prompts(new) * seeds
        result, _ = sample_and_score(pipe, prompts, range(len(prompts)), num_inference_steps=steps)
        out[name] = {k: result[k] for k in ("n", "color_acc", "shape_acc")}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ls_video.toy.personalise", description=__doc__.split("\n")[0])
    p.add_argument("--base", default="assets/toy-base", help="the toy base (Stable Diffusion folder)")
    p.add_argument("--out", required=True, help="output folder (Stable Diffusion layout)")
    defaults = PersonaliseConfig()
    for name in ("steps", "batch", "decoder_steps", "decoder_batch", "num_images", "seed"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name),
                       help=f"default {getattr(defaults, name)}")
    for name in ("lr", "embedding_lr", "decoder_lr"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name),
                       help=f"default {getattr(defaults, name)}")
    p.add_argument("--check-seeds", type=int, default=4, help="samples per image prompt in the check (0: skip)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (one is fastest on a shared machine)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = PersonaliseConfig(steps=args.steps, batch=args.batch, lr=args.lr, embedding_lr=args.embedding_lr,
                            decoder_steps=args.decoder_steps, decoder_batch=args.decoder_batch,
                            decoder_lr=args.decoder_lr, num_images=args.num_images, seed=args.seed)
    report = personalise(args.base, args.out, cfg, check_seeds=args.check_seeds)
    print(f"personalised model written to {args.out}: {args.steps} steps at {report['steps_per_s']} steps/s; "
          f"check {report['check']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
