"""FVD and video IS with the networks StyleGAN-V ships, called the way StyleGAN-V calls them.

* **I3D** (Kinetics-400, ``i3d_torchscript.pt``, StyleGAN-V ``src/metrics/frechet_video_distance.py``):
  ``detector(videos, rescale=True, resize=True, return_features=True)`` with ``videos`` uint8 in [0, 255],
  layout ``(B, 3, T, H, W)``, RGB. The network maps [0, 255] to [-1, 1] itself (``rescale``), resizes to
  224 x 224 (``resize``) and returns the 400 logits before the softmax (``return_features``). The Fréchet
  distance uses StyleGAN-V's covariance (divided by N, float64).
* **C3D** (UCF-101-finetuned, ``c3d_ucf101.pt``, StyleGAN-V ``src/metrics/video_inception_score.py``):
  ``detector(videos)`` on uint8 ``(B, 3, 16, H, W)`` gives 101 class probabilities; the IS shuffles them
  with ``RandomState(42)`` and averages ``exp(KL)`` over 10 splits.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from ls_video.errors import UsageError
from ls_video.metrics.torchscript import load_torchscript

I3D_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1"  # StyleGAN-V's detector_url
C3D_URL = "https://www.dropbox.com/s/jxpu7avzdc9n97q/c3d_ucf101.pt?dl=1"
I3D_KWARGS = dict(rescale=True, resize=True, return_features=True)


def to_network_layout(videos: list[np.ndarray]) -> torch.Tensor:
    """``(F, H, W, 3)`` uint8 videos -> one uint8 ``(B, 3, F, H, W)`` tensor (RGB, values untouched)."""
    arrays = [np.asarray(v) for v in videos]
    if any(a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] != 3 for a in arrays):
        raise UsageError("videos must be (F, H, W, 3) uint8 arrays")
    if len({a.shape for a in arrays}) != 1:
        raise UsageError(f"videos of different shapes in one batch: {sorted({a.shape for a in arrays})}")
    return torch.from_numpy(np.stack(arrays)).permute(0, 4, 1, 2, 3).contiguous()


class VideoNetwork:
    """A StyleGAN-V TorchScript video network and its protocol (file, SHA-256, the call it gets)."""

    kind = "video network"
    kwargs: dict = {}

    def __init__(self, path: str, device: str = "cpu", batch_size: int = 8) -> None:
        self.model, self.local, self.sha256 = load_torchscript(path, device)
        self.path, self.device, self.batch_size = path, device, batch_size
        call = ", ".join(["videos"] + [f"{k}={v}" for k, v in self.kwargs.items()])
        self.protocol = dict(extractor=self.kind, path=path, sha256=self.sha256, call=f"detector({call})",
                             value_range="uint8 [0, 255], (B, 3, T, H, W), RGB")

    @torch.no_grad()
    def __call__(self, videos: Iterable[np.ndarray]) -> np.ndarray:
        """One output row per video (float32)."""
        videos, out = list(videos), []
        for i in range(0, len(videos), self.batch_size):
            x = to_network_layout(videos[i:i + self.batch_size]).to(self.device)
            out.append(self.model(x, **self.kwargs).float().cpu())
        if not out:
            raise UsageError("no videos to score")
        return torch.cat(out).numpy()


class I3D(VideoNetwork):
    """I3D features before the softmax: ``(N, 400)`` for the real network."""

    kind = "I3D Kinetics-400 (StyleGAN-V i3d_torchscript.pt)"
    kwargs = I3D_KWARGS


class C3D(VideoNetwork):
    """UCF-101 class probabilities ``(N, 101)`` from StyleGAN-V's C3D."""

    kind = "C3D UCF-101 (StyleGAN-V c3d_ucf101.pt)"
    kwargs: dict = {}


def inception_score(probs: np.ndarray, num_splits: int = 10, seed: int = 42) -> tuple[float, float]:
    """Mean and std over ``num_splits`` of ``exp(E[KL(p(y|x) || p(y))])`` (StyleGAN-V's ``compute_isv``)."""
    probs = np.array(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) < num_splits:
        raise UsageError(f"need at least {num_splits} probability rows for the IS, got {probs.shape}")
    np.random.RandomState(seed).shuffle(probs)
    n, scores = len(probs), []
    for i in range(num_splits):
        part = probs[i * n // num_splits:(i + 1) * n // num_splits]
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
        scores.append(np.exp(np.nan_to_num(kl).sum(1).mean()))  # 0 log 0 = 0
    return float(np.mean(scores)), float(np.std(scores))
