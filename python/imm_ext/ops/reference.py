"""Pure-PyTorch references for the pairwise-kernel ops: same signatures, plain autograd.

They materialise the (G, N, M, D) difference tensor, so they are for tests, for checking, and for
devices that have no compiled kernel; the compiled ops never build it. Distances come from explicit
differences (as in the kernels) and are clamped below at eps before scaling:
    d = c * max(||x - y||, eps),   c = distance_scale.
"""
from __future__ import annotations

import torch

from .pairwise_checks import (ESTIMATORS, KERNELS, REDUCTIONS, Bandwidth, DistanceScale, accumulate_dtype,
                      bandwidth_table, check_choice, check_eps, check_point_sets,
                      resolve_distance_scale)


def _ratio(d: torch.Tensor, bandwidth: torch.Tensor) -> torch.Tensor:
    """u = d / h, where it overflows (tiny h) the largest finite float instead of inf: the kernels and
    their derivatives multiply u by factors that vanish there, and 0 * inf would be NaN."""
    return (d / bandwidth).clamp(max=torch.finfo(d.dtype).max)


def kernel_profile(d: torch.Tensor, bandwidth: torch.Tensor, kernel: str) -> torch.Tensor:
    """k(d) for one bandwidth h (broadcast against d): laplace exp(-d/h), gaussian exp(-d^2/(2h^2)),
    energy -d, imq (1 + d^2/h^2)^(-1/2). Exact 0 with zero gradient where k underflows."""
    if kernel == "laplace":
        return torch.exp(-d / bandwidth)
    if kernel == "gaussian":
        return torch.exp(-0.5 * _ratio(d, bandwidth) ** 2)
    if kernel == "energy":
        return torch.broadcast_to(-d, torch.broadcast_shapes(d.shape, bandwidth.shape))
    return bandwidth / torch.hypot(bandwidth, d)  # no overflow in u^2, no underflow in its gradient


def kernel_slope(d: torch.Tensor, bandwidth: torch.Tensor, kernel: str) -> torch.Tensor:
    """dk/dd of `kernel_profile`, for the analytic gradients of the kernel-less fallback: (dk/du) / h
    with u = d / h, so a tiny h never meets an underflowed kernel as inf * 0."""
    if kernel == "laplace":
        return -torch.exp(-d / bandwidth) / bandwidth
    if kernel == "energy":
        return torch.full(torch.broadcast_shapes(d.shape, bandwidth.shape), -1.0, dtype=d.dtype, device=d.device)
    u = _ratio(d, bandwidth)
    if kernel == "gaussian":
        return -(u * torch.exp(-0.5 * u**2)) / bandwidth
    w = kernel_profile(d, bandwidth, kernel)
    return -(w / bandwidth) * (u * w) * w  # w^3 alone underflows where the slope does not


def distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(G, N, M) Euclidean distances from explicit differences."""
    return ((x[:, :, None, :] - y[:, None, :, :]) ** 2).sum(-1).sqrt()


def kernel_matrix(x: torch.Tensor, y: torch.Tensor, bandwidths: torch.Tensor, kernel: str,
                  distance_scale: float, eps: float) -> torch.Tensor:
    """(G, N, M) kernel matrix summed over the K bandwidths of `bandwidths` (G, K)."""
    squared = ((x[:, :, None, :] - y[:, None, :, :]) ** 2).sum(-1)
    d = distance_scale * squared.clamp_min(eps * eps).sqrt()  # clamp before sqrt: finite gradient
    h = bandwidths[:, None, None, :]
    return kernel_profile(d[..., None], h, kernel).sum(-1)


def pairwise_kernel_reference(x: torch.Tensor, y: torch.Tensor, *, kernel: str,
                              bandwidth: Bandwidth = 1.0, distance_scale: DistanceScale = None,
                              eps: float = 1e-8) -> torch.Tensor:
    """Reference for `imm_ext.pairwise_kernel`."""
    check_choice("kernel", kernel, KERNELS)
    sets = check_point_sets(x, y)
    acc = accumulate_dtype(sets.x.dtype)
    h = bandwidth_table(bandwidth, sets.groups, kernel, sets.x.device, acc)
    scale = resolve_distance_scale(distance_scale, sets.dim)
    k = kernel_matrix(sets.x.to(acc), sets.y.to(acc), h, kernel, scale, check_eps(eps)).to(sets.x.dtype)
    return k if sets.batched else k[0]


def mmd_loss_reference(x: torch.Tensor, y: torch.Tensor, *, kernel: str = "laplace",
                       bandwidth: Bandwidth = 1.0, estimator: str = "biased",
                       distance_scale: DistanceScale = None, reduction: str = "mean",
                       eps: float = 1e-8) -> torch.Tensor:
    """Reference for `imm_ext.mmd_loss`: squared MMD from the three full kernel matrices."""
    check_choice("kernel", kernel, KERNELS)
    check_choice("estimator", estimator, ESTIMATORS)
    check_choice("reduction", reduction, REDUCTIONS)
    sets = check_point_sets(x, y)
    acc = accumulate_dtype(sets.x.dtype)
    n, m = sets.x.shape[1], sets.y.shape[1]
    if estimator == "unbiased" and min(n, m) < 2:
        raise ValueError(f"estimator='unbiased' needs at least 2 points in x and in y; got N={n}, M={m}")
    h = bandwidth_table(bandwidth, sets.groups, kernel, sets.x.device, acc)
    scale = resolve_distance_scale(distance_scale, sets.dim)
    eps = check_eps(eps)
    xa, ya = sets.x.to(acc), sets.y.to(acc)
    kxx = kernel_matrix(xa, xa, h, kernel, scale, eps)
    kyy = kernel_matrix(ya, ya, h, kernel, scale, eps)
    kxy = kernel_matrix(xa, ya, h, kernel, scale, eps)
    if estimator == "biased":
        mmd = kxx.mean((1, 2)) + kyy.mean((1, 2)) - 2 * kxy.mean((1, 2))
    else:
        off_x = ~torch.eye(n, dtype=torch.bool, device=xa.device)
        off_y = ~torch.eye(m, dtype=torch.bool, device=xa.device)
        mmd = ((kxx * off_x).sum((1, 2)) / (n * (n - 1)) + (kyy * off_y).sum((1, 2)) / (m * (m - 1))
               - 2 * kxy.mean((1, 2)))
    return reduce_per_set(mmd, reduction, sets.batched)


def reduce_per_set(values: torch.Tensor, reduction: str, batched: bool) -> torch.Tensor:
    """Apply `reduction` to per-set values (G,); unbatched input with 'none' gives a 0-d tensor."""
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values if batched else values[0]


def interpolant_pair_reference(x: torch.Tensor, noise: torch.Tensor, alpha_t: torch.Tensor,
                               sigma_t: torch.Tensor, alpha_r: torch.Tensor, sigma_r: torch.Tensor,
                               particles: int):
    """Plain-PyTorch (x_t, x_r) of imm_ext.ops.interpolant_pair, in the accumulation dtype, cast back."""
    acc = accumulate_dtype(x.dtype)
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    per = lambda c: c.to(acc).repeat_interleave(particles).reshape(shape)
    xa, na = x.to(acc), noise.to(acc)
    return ((per(alpha_t) * xa + per(sigma_t) * na).to(x.dtype),
            (per(alpha_r) * xa + per(sigma_r) * na).to(x.dtype))


def sampler_step_reference(x: torch.Tensor, g_cond: torch.Tensor, c_skip: torch.Tensor, c_out: torch.Tensor,
                           g_uncond=None, guidance=None) -> torch.Tensor:
    """Plain-PyTorch x_s of imm_ext.ops.sampler_step, in the accumulation dtype of x, cast back."""
    acc = accumulate_dtype(x.dtype)
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    g = g_cond.to(acc)
    if g_uncond is not None:
        g = g_uncond.to(acc) + guidance * (g - g_uncond.to(acc))
    return (c_skip.to(acc).reshape(shape) * x.to(acc) + c_out.to(acc).reshape(shape) * g).to(x.dtype)
