"""FID as published: Inception-v3 pool features of every frame, through clean-fid (``pip install clean-fid``).

clean-fid (Parmar et al., CVPR 2022) is used in its ``clean`` mode: each frame is resized to 299 x 299 with
PIL bicubic on float values (``cleanfid.resize.build_resizer("clean")``), fed in [0, 255] to clean-fid's
``InceptionV3W``, which scales to [-1, 1] and returns the 2048-d pool features of the StyleGAN2-ADA TorchScript
port of the TF Inception (``inception-2015-12-05.pt``). The file comes from a path or a URL the user gives
(:data:`INCEPTION_URL` is the one clean-fid itself downloads); nothing here downloads by default. Only
``cleanfid.resize`` and ``cleanfid.inception_torchscript`` are used: they need torch, numpy, Pillow and
requests, not clean-fid's torchvision / scipy extras. The Fréchet distance is this project's float64 one with
clean-fid's (unbiased) covariance.

CLIP-FID (:func:`clip_frame_features`) is clean-fid's ``model_name="clip_vit_b_32"`` definition: ``encode_image``
features of CLIP ViT-B/32 on frames resized to 224 (bicubic, shortest side) and centre-cropped, CLIP mean/std.
clean-fid's own CLIP path imports OpenAI's ``clip`` package (not on PyPI), so the same weights and
preprocessing come from transformers (``openai/clip-vit-base-patch32``: ``get_image_features`` is
``encode_image``).
"""

from __future__ import annotations

import functools
import os
import tempfile

import numpy as np
import torch

from ls_video.errors import UsageError
from ls_video.metrics.torchscript import fetch, sha256_file

INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
INCEPTION_NAME = "inception-2015-12-05.pt"  # the file name clean-fid's InceptionV3W loads from a folder


def _cleanfid():
    try:
        from cleanfid.inception_torchscript import InceptionV3W
        from cleanfid.resize import build_resizer
    except ImportError as err:
        raise UsageError("FID with Inception-v3 needs clean-fid: pip install 'ls-video[fid]' "
                         "(or pip install clean-fid)") from err
    return InceptionV3W, build_resizer


class Inception:
    """``frames(videos)`` -> ``(N*F, 2048)`` Inception-v3 pool features, clean-fid ``clean`` mode."""

    def __init__(self, path: str, device: str = "cpu", batch_size: int = 32) -> None:
        inception_cls, build_resizer = _cleanfid()
        local = fetch(path)
        self.sha256 = sha256_file(local)
        with tempfile.TemporaryDirectory() as folder:  # InceptionV3W loads FOLDER/inception-2015-12-05.pt
            os.symlink(os.path.abspath(local), os.path.join(folder, INCEPTION_NAME))
            try:
                self.model = inception_cls(folder, download=False, resize_inside=False).to(device).eval()
            except RuntimeError as err:
                raise UsageError(f"{path} is not clean-fid's Inception TorchScript ({str(err)[:120]})") from err
        self.resize = build_resizer("clean")
        self.path, self.device, self.batch_size = path, device, batch_size
        self.protocol = dict(extractor="Inception-v3 pool3 (clean-fid InceptionV3W, StyleGAN2-ADA TorchScript)",
                             path=path, sha256=self.sha256, library="clean-fid " + _version("clean-fid"),
                             value_range="uint8 frames -> PIL bicubic 299x299 (clean-fid 'clean') -> [0, 255] "
                                         "-> network (x - 128) / 128", per="frame")

    @torch.no_grad()
    def frames(self, videos: list[np.ndarray]) -> np.ndarray:
        frames = [f for v in videos for f in np.asarray(v)]
        out = []
        for i in range(0, len(frames), self.batch_size):
            batch = np.stack([self.resize(f) for f in frames[i:i + self.batch_size]])  # (B, 299, 299, 3) float
            x = torch.from_numpy(batch.transpose(0, 3, 1, 2).copy()).to(self.device)
            out.append(self.model(x).float().cpu())
        if not out:
            raise UsageError("no frames to score")
        return torch.cat(out).numpy()


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


@functools.lru_cache(maxsize=2)
def _clip_extractor(clip_model: str, device: str):
    from ls_video.metrics.features import Extractor

    return Extractor(clip_model, device)


def clip_frame_features(videos: list[np.ndarray], clip_model: str, device: str = "cpu") -> tuple[np.ndarray, dict]:
    """CLIP-FID features (``encode_image`` of every frame) and their protocol."""
    ex = _clip_extractor(clip_model, device)
    if ex.kind not in ("clip", "clip_vision_model"):
        raise UsageError(f"CLIP-FID needs a CLIP model, not {clip_model} ({ex.kind})")
    protocol = dict(ex.protocol, definition="clean-fid clip_vit_b_32 (encode_image features, per frame)")
    return ex.frame_features(videos), protocol
