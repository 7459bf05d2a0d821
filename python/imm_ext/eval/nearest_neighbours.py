"""k-nearest-neighbour ball metrics: precision and recall (Kynkaanniemi et al. 2019), density and
coverage (Naeem et al. 2020). Each point's ball has the radius of its k-th nearest other point of
its own set. Precision: the share of generated points inside some real ball (fidelity); recall: the
share of real points inside some generated ball (diversity); density: the mean number of real balls
holding a generated point, divided by k (about 1 when the sets match); coverage: the share of real
balls that hold at least one generated point (robust to outliers, sensitive to dropped modes).
"""
from __future__ import annotations

from typing import Dict

import torch

from ..ops.checks import check_int
from .features import as_feature_pair

_ROWS_PER_CHUNK = 2048
# Balls are closed. Distances come from matrix products, so the same pair's distance can differ in the
# last bits between two calls; this relative slack keeps a point on its ball's edge (its own k-th
# neighbour) inside.
_EDGE_SLACK = 1 + 1e-9


def knn_radii(points: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point of the same set (with the edge slack)."""
    radii = [torch.kthvalue(torch.cdist(chunk, points), k + 1, dim=1).values  # +1: the point itself at 0
             for chunk in points.split(_ROWS_PER_CHUNK)]
    return torch.cat(radii) * _EDGE_SLACK


def _ball_counts(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """For each query, how many balls (centres, radii) contain it."""
    return torch.cat([(torch.cdist(chunk, centres) <= radii).sum(1) for chunk in queries.split(_ROWS_PER_CHUNK)])


def _nearest_query_within(centres: torch.Tensor, radii: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """For each ball, whether its nearest query lies inside it."""
    nearest = torch.cat([torch.cdist(chunk, queries).min(1).values for chunk in centres.split(_ROWS_PER_CHUNK)])
    return nearest <= radii


def _check(real, fake, k):
    check_int("k", k)
    real, fake = as_feature_pair("real", real, "fake", fake, min_rows=k + 1)
    return real, fake


def precision_recall(real, fake, k: int = 5) -> Dict[str, float]:
    """{"precision", "recall"} of fake (M, D) against real (N, D); both sets need more than k rows."""
    real, fake = _check(real, fake, k)
    precision = (_ball_counts(fake, real, knn_radii(real, k)) > 0).double().mean()
    recall = (_ball_counts(real, fake, knn_radii(fake, k)) > 0).double().mean()
    return {"precision": float(precision), "recall": float(recall)}


def density_coverage(real, fake, k: int = 5) -> Dict[str, float]:
    """{"density", "coverage"} of fake (M, D) against real (N, D); real needs more than k rows."""
    real, fake = _check(real, fake, k)
    radii = knn_radii(real, k)
    density = _ball_counts(fake, real, radii).double().mean() / k
    coverage = _nearest_query_within(real, radii, fake).double().mean()
    return {"density": float(density), "coverage": float(coverage)}
