"""The Frechet distance between Gaussians fitted to two feature sets (the "FID" formula):

    FD = ||mu_1 - mu_2||^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^(1/2))    (Heusel et al. 2017)

In float64. tr((S_1 S_2)^(1/2)) is the sum of the square roots of the eigenvalues of the symmetric
PSD matrix S_1^(1/2) S_2 S_1^(1/2) (same spectrum as S_1 S_2), so no complex or non-symmetric square
root is ever taken and rank-deficient covariances (fewer samples than dimensions) are fine.
"""
from __future__ import annotations

import torch

from .features import as_feature_pair


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def gaussian_stats(features: torch.Tensor):
    """Mean and unbiased covariance of float64 (N, D) features."""
    return features.mean(0), torch.cov(features.T).reshape(features.shape[1], features.shape[1])


def frechet_distance_from_stats(mu1, cov1, mu2, cov2) -> float:
    root1 = _psd_sqrt(cov1)
    cross = torch.linalg.eigvalsh(root1 @ cov2 @ root1).clamp_min(0).sqrt().sum()
    distance = (mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * cross
    return max(float(distance), 0.0)  # rounding can leave -1e-15 for identical sets


def frechet_distance(features1, features2) -> float:
    """FD between the Gaussian fits of features1 (N, D) and features2 (M, D); N, M >= 2."""
    f1, f2 = as_feature_pair("features1", features1, "features2", features2)
    return frechet_distance_from_stats(*gaussian_stats(f1), *gaussian_stats(f2))
