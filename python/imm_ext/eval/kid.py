"""Kernel Inception Distance (Binkowski et al. 2018): the unbiased squared MMD with the cubic polynomial
kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets of both sets.

Both sets are first divided by one factor, the root mean square entry of the reference (second) set,
so that x.y / d is O(1) whatever the scale of the feature network (Inception's features are O(1)
already; a small classifier's need not be). The factor depends on the reference set only, so KIDs of
several generators against the same reference stay comparable.
"""
from __future__ import annotations

import torch

from ..ops.checks import check_int
from .features import as_feature_pair


_SUBSETS_PER_BATCH = 8


def _cubic_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(x.y / d + 1)^3 for every pair, batched over subsets: (S, m, d) x (S, m, d) -> (S, m, m)."""
    return (a @ b.transpose(1, 2) / a.shape[2] + 1) ** 3


def _unbiased_mmd2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per subset, the unbiased MMD^2 (U-statistic: i = j left out within each set) of x and y (S, m, d)."""
    m = x.shape[1]
    within = sum(k.sum((1, 2)) - k.diagonal(dim1=1, dim2=2).sum(1) for k in (_cubic_kernel(x, x), _cubic_kernel(y, y)))
    return within / (m * (m - 1)) - 2 * _cubic_kernel(x, y).mean((1, 2))


def kernel_inception_distance(generated, reference, *, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0, rescale: bool = True) -> float:
    """Mean over `subsets` draws of the unbiased MMD^2 between subset_size rows of each set (drawn
    without replacement; subset_size is capped at the smaller set's size, which must be >= 2)."""
    x, y = as_feature_pair("generated", generated, "reference", reference)
    check_int("subsets", subsets)
    check_int("subset_size", subset_size, 2)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int; got {seed!r}")
    if rescale:
        factor = y.square().mean().sqrt().clamp_min(1e-12)
        x, y = x / factor, y / factor
    size = min(subset_size, len(x), len(y))
    generator = torch.Generator().manual_seed(seed)
    picks_x = torch.stack([torch.randperm(len(x), generator=generator)[:size] for _ in range(subsets)])
    picks_y = torch.stack([torch.randperm(len(y), generator=generator)[:size] for _ in range(subsets)])
    estimates = [_unbiased_mmd2(x[px], y[py]) for px, py in zip(picks_x.split(_SUBSETS_PER_BATCH),
                                                                picks_y.split(_SUBSETS_PER_BATCH))]
    return float(torch.cat(estimates).mean())
