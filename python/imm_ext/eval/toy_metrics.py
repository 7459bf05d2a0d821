"""Metrics for samples of the 2-D toys (data-and-metrics.md): several numbers, because each one alone
misses something (the log-density misses dropped modes, a single wide-bandwidth MMD misses blur).

- energy: energy distance (unbiased), imm_ext.mmd_loss with kernel="energy";
- sliced_w2: sliced Wasserstein-2 over 256 directions;
- mmd2: unbiased squared MMD with a sum of Gaussian kernels whose bandwidths are 0.02, 0.05, 0.1, 0.2,
  0.5 and 1 times the toy's overall std;
- log_density: mean exact log-density of the points (the Gaussian mixtures 8gaussians and 25gaussians;
  None otherwise: the checkerboard's density is flat on its support, where in_modes says the same);
- in_modes: share of the points inside a mode (within 3 component stds of a Gaussian's mean, or inside
  a checkerboard square); modes_covered: share of the modes holding at least half their fair share
  n / K of the points (None for toys without separate modes).
The reference is a fresh sample of the toy (or `reference`); "real_vs_real" holds the same numbers for
another fresh real sample of the generated set's size against that reference: the floor to compare with.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..data import toy2d
from ..ops import mmd_loss
from .features import as_features
from .sliced_wasserstein import sliced_wasserstein

BANDWIDTH_FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
SMOOTH_EXACT_DENSITY = ("8gaussians", "25gaussians")
COVERED_SHARE = 0.5


def _compare(points: torch.Tensor, reference: torch.Tensor, name: str, std: Optional[float], seed: int) -> dict:
    overall_std = toy2d.TOYS[name].std if std is None else std
    result = {
        "energy": float(mmd_loss(points, reference, kernel="energy", estimator="unbiased")),
        "sliced_w2": sliced_wasserstein(points, reference, projections=256, seed=seed),
        "mmd2": float(mmd_loss(points, reference, kernel="gaussian", estimator="unbiased",
                               bandwidth=[f * overall_std for f in BANDWIDTH_FRACTIONS])),
        "log_density": (float(toy2d.log_density(name, points, std=std).mean()) if name in SMOOTH_EXACT_DENSITY
                        else None),
        "in_modes": None, "modes_covered": None,
    }
    centres = toy2d.mode_centers(name, std=std)
    if centres is not None:
        modes = toy2d.mode_index(name, points, std=std)
        counts = torch.bincount(modes[modes >= 0], minlength=len(centres))
        result["in_modes"] = float((modes >= 0).double().mean())
        result["modes_covered"] = float((counts >= COVERED_SHARE * len(points) / len(centres)).double().mean())
    return result


def toy_metrics(generated, name: str, *, reference=None, seed: int = 0, std: Optional[float] = 0.5) -> dict:
    """Metrics of generated (N, 2) points against the toy `name` (sampled with overall std `std`, as
    `toy2d.sample`), with a "real_vs_real" entry beside them. Pairwise costs grow as N^2: a few thousand
    points take well under a second."""
    if name not in toy2d.TOYS:
        raise ValueError(f"name must be one of {', '.join(map(repr, toy2d.NAMES))}; got {name!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0; got {seed!r}")
    points = as_features("generated", generated)
    if points.shape[1] != 2:
        raise ValueError(f"generated must be (N, 2) points; got shape {tuple(points.shape)}")
    generator = torch.Generator().manual_seed(seed)
    if reference is None:
        reference = toy2d.sample(name, len(points), generator, std=std, dtype=torch.float64)
    reference = as_features("reference", reference)
    if reference.shape[1] != 2:
        raise ValueError(f"reference must be (M, 2) points; got shape {tuple(reference.shape)}")
    real = toy2d.sample(name, len(points), generator, std=std, dtype=torch.float64)
    result = _compare(points, reference, name, std, seed)
    result["real_vs_real"] = _compare(real, reference, name, std, seed)
    return result
