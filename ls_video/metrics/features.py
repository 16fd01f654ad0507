"""Feature extractors for FID / FVD and the CLIP score, loaded from a local path or hub id.

* ``CLIPModel`` / ``CLIPVisionModel(WithProjection)`` (transformers): per-frame image features (FID
  over frames); with a text tower also CLIPSIM.
* ``VideoMAEModel`` (transformers): clip features (FVD), the mean of the last hidden states.
* our toy video net (``python -m ls_video.metrics.toy_net``): clip features for the toy-world FVD.

* a TorchScript file (``.pt``, path or URL): the published networks. As a clip extractor (FVD) it is
  StyleGAN-V's I3D (``ls_video.metrics.i3d``), as a frame extractor (FID) clean-fid's Inception-v3
  (``ls_video.metrics.inception``): with these, FVD and FID are the published ones.

Numbers from the transformers extractors are comparable between runs of this project, not with papers,
unless a paper used the same extractor (CLIPSIM and CLIP-FID do: ViT-B/32 CLIP). Every result records
the extractor and the SHA-256 of its weights.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os

import numpy as np
import torch

from ls_video.errors import UsageError


def weights_hash(path: str) -> str:
    """SHA-256 over a model folder's weight files (first 16 hex digits); ``"hub"`` for remote ids."""
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")) + glob.glob(os.path.join(path, "*.bin")))
    if not files:
        return "hub"
    h = hashlib.sha256()
    for name in files:
        with open(name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def model_type(path: str) -> str:
    config = os.path.join(path, "config.json")
    if os.path.isfile(config):
        with open(config) as f:
            return json.load(f).get("model_type", "")
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path).model_type


class Extractor:
    """``video_features(videos)`` -> ``(N, D)``; ``frame_features(videos)`` -> ``(N*F, D)``.

    Videos are ``(F, H, W, 3)`` uint8 arrays; the value range fed to the network is recorded in
    ``protocol``.
    """

    biased = False  # the covariance of the Fréchet distance: 1/N for StyleGAN-V's I3D, 1/(N-1) otherwise

    def __init__(self, path: str, device: str = "cpu", batch_size: int = 16) -> None:
        from ls_video.metrics.torchscript import is_torchscript_path

        self.path, self.device, self.batch_size = path, device, batch_size
        if is_torchscript_path(path):  # the published networks: I3D for clips, Inception (clean-fid) for frames
            self.kind, self.network = "torchscript", None
            self.protocol = dict(extractor=path, model_type="torchscript")
            return
        self.kind = model_type(path)
        if self.kind == "ls_video_toy_net":
            from ls_video.metrics.toy_net import ToyVideoNet

            self.model = ToyVideoNet.load(path).to(device)
            value_range = "uint8 -> [-1, 1], native resolution"
        elif self.kind == "videomae":
            from transformers import AutoImageProcessor, VideoMAEModel

            self.model = VideoMAEModel.from_pretrained(path).to(device).eval()
            self.processor = AutoImageProcessor.from_pretrained(path)
            value_range = "uint8 -> processor (resize, /255, ImageNet mean/std)"
        elif self.kind in ("clip", "clip_vision_model"):
            from transformers import AutoImageProcessor, CLIPModel, CLIPVisionModelWithProjection

            cls = CLIPModel if self.kind == "clip" else CLIPVisionModelWithProjection
            self.model = cls.from_pretrained(path).to(device).eval()
            self.processor = AutoImageProcessor.from_pretrained(path)
            value_range = "uint8 -> processor (resize, centre crop, /255, CLIP mean/std)"
        else:
            raise UsageError(f"unsupported feature extractor {path!r} (model_type {self.kind!r}); "
                             "use a CLIP, VideoMAE or ls_video toy-net folder")
        self.protocol = dict(extractor=path, model_type=self.kind, weights_sha256=weights_hash(path),
                             value_range=value_range)

    def _published(self, cls: type) -> object:
        if not isinstance(self.network, cls):
            self.network = cls(self.path, self.device)
            self.protocol = dict(self.network.protocol, model_type="torchscript")
        return self.network

    @torch.no_grad()
    def frame_features(self, videos: list[np.ndarray]) -> np.ndarray:
        if self.kind == "torchscript":
            from ls_video.metrics.inception import Inception

            return self._published(Inception).frames(videos)
        if self.kind not in ("clip", "clip_vision_model"):
            raise UsageError(f"{self.path} gives clip features, not frame features (use a CLIP model for FID)")
        frames = [f for v in videos for f in v]
        out = []
        for i in range(0, len(frames), self.batch_size):
            pixels = self.processor(images=frames[i:i + self.batch_size], return_tensors="pt").pixel_values
            pixels = pixels.to(self.device)
            if self.kind == "clip":
                emb = self.model.get_image_features(pixel_values=pixels)
                emb = emb if isinstance(emb, torch.Tensor) else emb.pooler_output  # transformers 4 / 5
            else:
                emb = self.model(pixel_values=pixels).image_embeds
            out.append(emb.float().cpu())
        return torch.cat(out).numpy()

    @torch.no_grad()
    def video_features(self, videos: list[np.ndarray]) -> np.ndarray:
        if self.kind == "torchscript":
            from ls_video.metrics.i3d import I3D

            self.biased = True
            return self._published(I3D)(videos)
        out = []
        for i in range(0, len(videos), self.batch_size):
            chunk = videos[i:i + self.batch_size]
            if self.kind == "ls_video_toy_net":
                out.append(self.model.features(torch.from_numpy(np.stack(chunk)).to(self.device)).cpu())
            elif self.kind == "videomae":
                n = self.model.config.num_frames
                clips = [list(v[np.linspace(0, len(v) - 1, n).round().astype(int)]) for v in chunk]
                pixels = self.processor(clips, return_tensors="pt").pixel_values.to(self.device)
                out.append(self.model(pixel_values=pixels).last_hidden_state.mean(1).float().cpu())
            else:  # CLIP: mean of the frame embeddings (a weak video feature; prefer VideoMAE or I3D)
                frames = torch.from_numpy(self.frame_features(chunk))
                out.append(frames.view(len(chunk), -1, frames.shape[-1]).mean(1))
        return torch.cat(out).numpy()
