"""The public MMD and kernel-matrix API: `mmd_loss`, `MMDLoss`, `pairwise_kernel`.

Squared maximum mean discrepancy between point sets (Gretton et al. 2012), batched over G
independent pairs of sets as IMM needs (paper Eq. 67: one MMD per group of M particles, with a
time-dependent Laplace kernel, i.e. a per-group bandwidth, and distances scaled by 1/D).
"""
from __future__ import annotations

import torch

from . import pairwise_ops
from .pairwise_checks import (ESTIMATORS, KERNELS, REDUCTIONS, Bandwidth, DistanceScale, accumulate_dtype,
                      bandwidth_table, check_choice, check_eps, check_point_sets,
                      resolve_distance_scale)
from .reference import kernel_profile, reduce_per_set


def mmd_loss(x: torch.Tensor, y: torch.Tensor, *, kernel: str = "laplace", bandwidth: Bandwidth = 1.0,
             estimator: str = "biased", distance_scale: DistanceScale = None, reduction: str = "mean",
             eps: float = 1e-8) -> torch.Tensor:
    """Squared MMD between x and y (not halved: GeomLoss's SamplesLoss returns half of this).

    Args:
        x: (N, D) or (G, N, D) points; y: (M, D) or (G, M, D). G pairs of sets, one MMD each.
        kernel: "laplace" exp(-d/h), "gaussian" exp(-d^2/(2h^2)), "energy" -d (energy distance,
            bandwidth unused) or "imq" (1 + d^2/h^2)^(-1/2), with d = c * max(||x_i - y_j||, eps).
        bandwidth: h as a float, a (G,) tensor (one per set, IMM's time-dependent kernel), a (G, K)
            tensor, or a sequence of floats (the kernels are summed). Not differentiated.
        estimator: "biased" (V-statistic, all pairs including i = j: what IMM uses) or "unbiased"
            (U-statistic: i = j excluded within x and within y; needs N, M >= 2).
        distance_scale: c. None (1), "dim" (1/D, as IMM) or a positive float.
        reduction: "mean" or "sum" over sets, or "none": (G,) (a 0-d tensor for 2-D input).
        eps: lower clamp of ||x_i - y_j||; inside it the gradient is zero (no NaN at x_i = y_j).

    Returns:
        The loss in float32 (float64 for float64 input). Gradients flow to x and y; no work is
        spent on the gradient of an input that does not require it (IMM's stop-gradient target).
        NaN or inf in x or y propagate to NaN in the loss and gradients (not checked: a check would
        cost a device synchronisation).
    """
    check_choice("kernel", kernel, KERNELS)
    check_choice("estimator", estimator, ESTIMATORS)
    check_choice("reduction", reduction, REDUCTIONS)
    sets = check_point_sets(x, y)
    n, m = sets.x.shape[1], sets.y.shape[1]
    if estimator == "unbiased" and min(n, m) < 2:
        raise ValueError(f"estimator='unbiased' needs at least 2 points in x and in y; got N={n}, M={m}")
    h = bandwidth_table(bandwidth, sets.groups, kernel, sets.x.device, accumulate_dtype(sets.x.dtype),
                        check_values=False)
    scale = resolve_distance_scale(distance_scale, sets.dim)
    eps = check_eps(eps)
    means = _block_means(sets, h, kernel, scale, eps)
    k_xx, k_yy, k_xy = means.unbind(1)
    if estimator == "biased":
        mmd = k_xx + k_yy - 2 * k_xy
    else:
        # The diagonal k(x_i, x_i) = k(c * eps) is a constant with zero gradient: take it out.
        diagonal = kernel_profile(torch.tensor(scale * eps, dtype=h.dtype, device=h.device), h, kernel).sum(1)
        mmd = (n * k_xx - diagonal) / (n - 1) + (m * k_yy - diagonal) / (m - 1) - 2 * k_xy
    return reduce_per_set(mmd, reduction, sets.batched)


def mmd_terms(x: torch.Tensor, y: torch.Tensor, *, kernel: str = "laplace", bandwidth: Bandwidth = 1.0,
              distance_scale: DistanceScale = None, eps: float = 1e-8) -> torch.Tensor:
    """The three V-statistic means of the squared MMD, as a (G, 3) tensor (a (3,) one for 2-D input):
    mean k(x_i, x_j), mean k(y_i, y_j), mean k(x_i, y_j), so that the biased squared MMD is
    terms[..., 0] + terms[..., 1] - 2 * terms[..., 2]. Options and gradients as `mmd_loss`; IMM logs
    the three terms (paper Eq. 67: repulsion among y_t, the constant k(y_r, y_r), the attraction)."""
    check_choice("kernel", kernel, KERNELS)
    sets = check_point_sets(x, y)
    h = bandwidth_table(bandwidth, sets.groups, kernel, sets.x.device, accumulate_dtype(sets.x.dtype),
                        check_values=False)
    means = _block_means(sets, h, kernel, resolve_distance_scale(distance_scale, sets.dim), check_eps(eps))
    return means if sets.batched else means[0]


def _block_means(sets, bandwidths: torch.Tensor, kernel: str, scale: float, eps: float) -> torch.Tensor:
    n, m = sets.x.shape[1], sets.y.shape[1]
    sums, _ = pairwise_ops.mmd_block_sums(sets.x, sets.y, bandwidths, kernel, scale, eps)
    return sums / sums.new_tensor([n * n, m * m, n * m])


class MMDLoss(torch.nn.Module):
    """Module form of `mmd_loss`; the constructor takes the same keyword options."""

    def __init__(self, *, kernel: str = "laplace", bandwidth: Bandwidth = 1.0, estimator: str = "biased",
                 distance_scale: DistanceScale = None, reduction: str = "mean", eps: float = 1e-8):
        super().__init__()
        check_choice("kernel", kernel, KERNELS)
        check_choice("estimator", estimator, ESTIMATORS)
        check_choice("reduction", reduction, REDUCTIONS)
        self.options = dict(kernel=kernel, bandwidth=bandwidth, estimator=estimator,
                            distance_scale=distance_scale, reduction=reduction, eps=check_eps(eps))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return mmd_loss(x, y, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items() if not isinstance(v, torch.Tensor))


def pairwise_kernel(x: torch.Tensor, y: torch.Tensor, *, kernel: str, bandwidth: Bandwidth = 1.0,
                    distance_scale: DistanceScale = None, eps: float = 1e-8) -> torch.Tensor:
    """The kernel matrix k(x_i, y_j): (N, M) for 2-D input, (G, N, M) for batched input.

    Same kernel, bandwidth, distance_scale and eps conventions as `mmd_loss`; differentiable in x
    and y. Returned in the dtype of x (values accumulated in float32, float64 for float64).
    """
    check_choice("kernel", kernel, KERNELS)
    sets = check_point_sets(x, y)
    h = bandwidth_table(bandwidth, sets.groups, kernel, sets.x.device, accumulate_dtype(sets.x.dtype),
                        check_values=False)
    scale = resolve_distance_scale(distance_scale, sets.dim)
    k = pairwise_ops.pairwise_kernel_matrix(sets.x, sets.y, h, kernel, scale, check_eps(eps))
    return k if sets.batched else k[0]
