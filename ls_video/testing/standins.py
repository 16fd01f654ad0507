"""Stand-ins for the published feature networks: TorchScript files with the real ones' call signatures.

Each stand-in does what the real network does to its input (StyleGAN-V I3D: rescale [0, 255] -> [-1, 1] and
trilinear resize to 224; clean-fid Inception: the wrapper scales, ``layers`` sees 299 x 299 in [-1, 1]) and
refuses input the real one would misread (float where uint8 is expected, channels last). Its first outputs are
a probe of what it saw, so tests can check the preprocessing: :data:`PROBE` names them. The other outputs are
per-channel means over a coarse grid, linear in the pixel values.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

PROBE = ("mean_r", "mean_g", "mean_b", "min", "max", "frames", "height", "width")


def _probe(x: torch.Tensor) -> torch.Tensor:
    """``(B, 3, ...)`` -> ``(B, 8)``: channel means, min, max and the last three sizes."""
    b = x.shape[0]
    flat = x.reshape(b, 3, -1)
    sizes = torch.tensor([float(x.shape[-3]) if x.dim() == 5 else 1.0, float(x.shape[-2]), float(x.shape[-1])],
                         dtype=x.dtype, device=x.device).expand(b, 3)
    return torch.cat([flat.mean(-1), flat.amin((1, 2))[:, None], flat.amax((1, 2))[:, None], sizes], 1)


class StandInI3D(nn.Module):
    """``forward(x, rescale, resize, return_features)`` as StyleGAN-V's ``i3d_torchscript.pt``; 400 outputs."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != 3:
            raise RuntimeError("I3D expects (B, 3, T, H, W)")
        if rescale:
            if x.dtype != torch.uint8:
                raise RuntimeError("rescale=True expects uint8 videos in [0, 255]")
            x = x.float() * (2.0 / 255.0) - 1.0
        if resize:
            x = F.interpolate(x, size=(x.shape[2], 224, 224), mode="trilinear", align_corners=False)
        b = x.shape[0]
        grid = F.adaptive_avg_pool3d(x, (4, 4, 4)).reshape(b, -1)  # (B, 192), linear in x
        feats = torch.cat([_probe(x), grid, torch.zeros(b, 400 - 8 - 192, dtype=x.dtype, device=x.device)], 1)
        return feats if return_features else torch.softmax(feats, dim=1)


class _InceptionLayers(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        grid = F.adaptive_avg_pool2d(x, (8, 8)).reshape(b, -1)  # (B, 192)
        return torch.cat([_probe(x), grid, torch.zeros(b, 2048 - 8 - 192, dtype=x.dtype, device=x.device)], 1)


class StandInInception(nn.Module):
    """The StyleGAN2-ADA ``inception-2015-12-05.pt`` surface clean-fid uses: ``layers`` on 299 x 299 in [-1, 1]
    (``forward(x, return_features=True)`` resizes inside, the legacy mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = _InceptionLayers()

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = F.interpolate(x.float(), size=(299, 299), mode="bilinear", align_corners=False)
        return self.layers((x - 128.0) / 128.0)


class StandInC3D(nn.Module):
    """``forward(x)`` on uint8 ``(B, 3, 16, H, W)`` -> 101 probabilities, like StyleGAN-V's ``c3d_ucf101.pt``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(3 * 16, 101)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != 3 or x.shape[2] != 16 or x.dtype != torch.uint8:
            raise RuntimeError("C3D expects uint8 (B, 3, 16, H, W)")
        means = x.float().mean((3, 4)).reshape(x.shape[0], -1) / 32.0
        return torch.softmax(self.head(means), dim=1)


def save_standins(folder: str | os.PathLike) -> dict[str, str]:
    """Write ``i3d_torchscript.pt``, ``inception-2015-12-05.pt`` and ``c3d_ucf101.pt`` into ``folder``."""
    os.makedirs(folder, exist_ok=True)
    out = {}
    for key, name, module in (("i3d", "i3d_torchscript.pt", StandInI3D()),
                              ("inception", "inception-2015-12-05.pt", StandInInception()),
                              ("c3d", "c3d_ucf101.pt", StandInC3D())):
        out[key] = os.path.join(str(folder), name)
        torch.jit.save(torch.jit.script(module.eval()), out[key])
    return out
