"""CLIPSIM: mean over frames of the CLIP image-text cosine similarity with the prompt.

Reported as the raw cosine (the Latent-Shift paper's MSR-VTT figure is 0.2773 with ViT-B/32; some
tools report 100 x cosine clipped at 0, which is not this number), plus the frame-to-frame
consistency: mean CLIP image-image cosine of consecutive frames.
"""

from __future__ import annotations

import numpy as np
import torch

from ls_video.metrics.features import weights_hash


def _embeds(out) -> torch.Tensor:
    """Projected features: a tensor (transformers 4) or the output's ``pooler_output`` (transformers 5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def clipsim(videos: list[np.ndarray], prompts: list[str], model_path: str, device: str = "cpu",
            batch_size: int = 32) -> dict:
    """``clipsim`` and ``clip_frame_consistency`` for ``(F, H, W, 3)`` uint8 videos and their prompts."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    if len(videos) != len(prompts):
        raise ValueError(f"{len(videos)} videos but {len(prompts)} prompts")
    model = CLIPModel.from_pretrained(model_path).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    processor = AutoImageProcessor.from_pretrained(model_path)
    sims, consistency = [], []
    for video, prompt in zip(videos, prompts, strict=True):
        tokens = tokenizer([prompt], padding="max_length", truncation=True, return_tensors="pt")
        tokens = {k: v.to(device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        text = torch.nn.functional.normalize(_embeds(model.get_text_features(**tokens)), dim=-1)
        images = []
        for i in range(0, len(video), batch_size):
            pixels = processor(images=list(video[i:i + batch_size]), return_tensors="pt").pixel_values
            images.append(_embeds(model.get_image_features(pixel_values=pixels.to(device))))
        image = torch.nn.functional.normalize(torch.cat(images), dim=-1)
        sims.append(float((image @ text.T).mean()))
        if len(image) > 1:
            consistency.append(float((image[1:] * image[:-1]).sum(-1).mean()))
    return dict(clipsim=float(np.mean(sims)),
                clip_frame_consistency=float(np.mean(consistency)) if consistency else None,
                clipsim_protocol=dict(model=model_path, weights_sha256=weights_hash(model_path),
                                      value_range="uint8 -> processor (resize, centre crop, /255, CLIP mean/std)",
                                      score="raw cosine, mean over frames then videos"))
