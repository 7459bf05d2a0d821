"""Sliced Wasserstein-2 distance: the root mean square, over random unit directions, of the 1-D
Wasserstein-2 distance between the two sets' projections (computed from their quantile functions on a
common grid of levels, exact for sets of equal size)."""
from __future__ import annotations

import torch

from ..ops.checks import check_int
from .features import as_feature_pair


def _quantiles(sorted_values: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Empirical quantile function of the sorted columns (n, P) at the given levels in (0, 1)."""
    n = sorted_values.shape[0]
    return sorted_values[(levels * n).long().clamp_max(n - 1)]


def sliced_wasserstein(a, b, projections: int = 256, seed: int = 0) -> float:
    """SW_2 between point sets a (N, D) and b (M, D), with `projections` directions drawn from `seed`."""
    a, b = as_feature_pair("a", a, "b", b, min_rows=1)
    check_int("projections", projections)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int; got {seed!r}")
    directions = torch.randn(a.shape[1], projections, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    directions /= directions.norm(dim=0, keepdim=True)
    grid = max(len(a), len(b))
    levels = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    qa = _quantiles((a @ directions).sort(0).values, levels)
    qb = _quantiles((b @ directions).sort(0).values, levels)
    return float((qa - qb).square().mean().sqrt())
