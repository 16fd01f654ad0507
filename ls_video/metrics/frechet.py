"""Fréchet distance between two feature sets (the math behind FID and FVD).

``d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``, computed in float64 with symmetric
eigendecompositions: ``tr((S1 S2)^(1/2))`` is the sum of square roots of the eigenvalues of
``S1^(1/2) S2 S1^(1/2)``, which is symmetric positive semi-definite.
"""

from __future__ import annotations

import numpy as np
import torch

from ls_video.errors import UsageError


def feature_stats(features: np.ndarray | torch.Tensor, biased: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of ``(N, D)`` features: divided by ``N - 1`` (clean-fid, numpy), or by ``N`` with
    ``biased`` (StyleGAN-V's FVD)."""
    x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise UsageError(f"need (N >= 2, D) features, got {tuple(x.shape)}")
    return x.mean(0).numpy(), torch.cov(x.T, correction=0 if biased else 1).reshape(x.shape[1], x.shape[1]).numpy()


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(m)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Fréchet distance between Gaussians ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``."""
    mu1, mu2 = (torch.as_tensor(np.asarray(m), dtype=torch.float64) for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(np.asarray(s), dtype=torch.float64) for s in (sigma1, sigma2))
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    root1 = _sqrt_psd(s1)
    cross = torch.linalg.eigvalsh(root1 @ s2 @ root1).clamp(min=0).sqrt().sum()
    return float(((mu1 - mu2) ** 2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * cross)


def _low_rank_distance(a: torch.Tensor, b: torch.Tensor, biased: bool) -> float:
    """The same distance from the centred samples when there are fewer than features: with ``S1 = A^T A`` and
    ``S2 = B^T B``, the nonzero eigenvalues of ``S1 S2`` are the squared singular values of ``A B^T``, so
    ``tr((S1 S2)^(1/2))`` is its nuclear norm (exact, ``O(N1 N2 D)``, no eigenvalues of a singular matrix)."""
    ma, mb = a.mean(0), b.mean(0)
    ca = (a - ma) / (len(a) - (0 if biased else 1)) ** 0.5
    cb = (b - mb) / (len(b) - (0 if biased else 1)) ** 0.5
    cross = torch.linalg.svdvals(ca @ cb.T).sum()
    return float(((ma - mb) ** 2).sum() + (ca ** 2).sum() + (cb ** 2).sum() - 2 * cross)


def frechet_distance_of(features_a, features_b, biased: bool = False) -> float:
    """Fréchet distance between the Gaussian fits of two ``(N, D)`` feature sets (``biased``: see feature_stats)."""
    a, b = (torch.as_tensor(np.asarray(f), dtype=torch.float64) for f in (features_a, features_b))
    if a.ndim == b.ndim == 2 and a.shape[1] == b.shape[1] and min(len(a), len(b)) >= 2 \
            and min(len(a), len(b)) < a.shape[1]:
        return _low_rank_distance(a, b, biased)
    return frechet_distance(*feature_stats(features_a, biased), *feature_stats(features_b, biased))
