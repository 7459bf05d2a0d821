"""Argument checking and normalisation shared by the pairwise-kernel ops.

Every public op funnels its arguments through here, so that bad input fails the same way everywhere:
a ValueError or TypeError whose message names the offending argument, raised before any kernel runs.
`check_pair_op` and `check_pair_gradient_op` are the checks of the custom ops themselves (run in
their bodies, so also for direct torch.ops.imm_ext calls and under torch.compile): everything the
C++ kernels rely on, the scalars and bandwidths checked in the accumulation dtype they are used in.
The public functions check types and normalise (2-D to 3-D, dtype promotion, bandwidth table) with
trace-safe code and leave the value checks to the ops.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Optional, Sequence, Union

import torch

from .._core import KERNEL_CODES
from .checks import (accumulate_dtype, check_choice, check_finite_values,  # noqa: F401 (re-exported)
                     check_like, check_scalar, check_shape, check_tensor)

KERNELS = tuple(KERNEL_CODES)
ESTIMATORS = ("biased", "unbiased")
REDUCTIONS = ("mean", "sum", "none")
MAX_BANDWIDTHS = 16

Bandwidth = Union[float, Sequence[float], torch.Tensor]
DistanceScale = Union[None, str, float]


def _positive_finite(v) -> bool:
    """0 < v < inf without math.isfinite, so that it also traces (symbolic floats under compile)."""
    return 0 < v < math.inf


@dataclass(frozen=True)
class PairInputs:
    """Two point sets as contiguous (G, N, D) and (G, M, D) tensors of one dtype."""

    x: torch.Tensor
    y: torch.Tensor
    batched: bool  # False when the caller passed (N, D) and (M, D)

    @property
    def groups(self) -> int:
        return self.x.shape[0]

    @property
    def dim(self) -> int:
        return self.x.shape[2]


def _check_set_sizes(x: torch.Tensor, y: torch.Tensor, names: tuple = ("x", "y")) -> None:
    """(G, N, D) and (G, M, D) with G, N, M, D >= 1."""
    a, b = names
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{a} and {b} must have the same number of sets G; got {x.shape[0]} and {y.shape[0]}")
    if x.shape[2] != y.shape[2]:
        raise ValueError(f"{a} and {b} must have the same dimension D; got {x.shape[2]} and {y.shape[2]}")
    if x.shape[2] == 0:
        raise ValueError(f"{a} and {b} must have D >= 1")
    if x.shape[1] == 0:
        raise ValueError(f"{a} must hold at least one point (N >= 1)")
    if y.shape[1] == 0:
        raise ValueError(f"{b} must hold at least one point (M >= 1)")
    if x.shape[0] == 0:
        raise ValueError(f"{a} and {b} must hold at least one set (G >= 1)")


def check_point_sets(x, y) -> PairInputs:
    """Validate shapes, dtypes and devices of x (N, D)|(G, N, D) and y (M, D)|(G, M, D)."""
    for name, t in (("x", x), ("y", y)):
        check_tensor(name, t)
        if t.dim() not in (2, 3):
            raise ValueError(f"{name} must have shape (N, D) or (G, N, D); got {tuple(t.shape)}")
    if x.dim() != y.dim():
        raise ValueError(
            f"x and y must both be 2-D or both 3-D; got x {tuple(x.shape)} and y {tuple(y.shape)}")
    if x.device != y.device:
        raise ValueError(f"x and y must be on the same device; got x on {x.device}, y on {y.device}")
    batched = x.dim() == 3
    if not batched:
        x, y = x.unsqueeze(0), y.unsqueeze(0)
    _check_set_sizes(x, y)
    if x.dtype != y.dtype:
        common = torch.promote_types(x.dtype, y.dtype)
        x, y = x.to(common), y.to(common)
    return PairInputs(x.contiguous(), y.contiguous(), batched)


def _check_op_sets(names: tuple, x, y) -> None:
    """Two (G, N, D) sets of one supported dtype on one device, as the kernels read them."""
    for name, t in zip(names, (x, y)):
        check_tensor(name, t)
        if t.dim() != 3:
            raise ValueError(f"{name} must have shape (G, N, D); got {tuple(t.shape)}")
    check_like(names[1], y, x, names[0], dtype=True)
    _check_set_sizes(x, y, names)


def _check_op_options(x: torch.Tensor, bandwidth, kernel, distance_scale, eps) -> None:
    """kernel, the (G, K) bandwidth table in the accumulation dtype, and the scalars in that dtype."""
    check_choice("kernel", kernel, KERNELS)
    acc = accumulate_dtype(x.dtype)
    check_tensor("bandwidth", bandwidth, (acc,), str(acc).removeprefix("torch."))
    check_like("bandwidth", bandwidth, x, "x")
    if bandwidth.dim() != 2 or bandwidth.shape[0] != x.shape[0] or not 1 <= bandwidth.shape[1] <= MAX_BANDWIDTHS:
        raise ValueError(f"bandwidth must be a (G, K) table with G = {x.shape[0]} and 1 <= K <= "
                         f"{MAX_BANDWIDTHS}; got {tuple(bandwidth.shape)}")
    check_scalar("distance_scale", distance_scale, acc, minimum=0.0)
    check_scalar("eps", eps, acc, minimum=0.0, strict=False)
    if kernel != "energy":  # the energy kernel never reads its table
        check_finite_values("bandwidth", bandwidth, positive=True)


def check_pair_op(x, y, bandwidth, kernel, distance_scale, eps) -> None:
    """The checks of imm_ext::mmd_block_sums and imm_ext::pairwise_kernel_matrix."""
    _check_op_sets(("x", "y"), x, y)
    _check_op_options(x, bandwidth, kernel, distance_scale, eps)


def check_pair_gradient_op(rows, cols0, weight0, cols1, weight1, bandwidth, kernel, distance_scale, eps,
                           distances=None) -> None:
    """The checks of imm_ext::pair_gradient: each (cols, weight) pair a (G, C, D) set and a
    (G, R, C) weight (any strides) in the accumulation dtype, both or neither of the second pair;
    kept distances (G, R, C0 + C1) in the accumulation dtype, only where D > 64 (the wide layout)."""
    if (cols1 is None) != (weight1 is None):
        raise ValueError("cols1 and weight1 must be given together (or both be None)")
    for cols_name, cols, weight_name, weight in (("cols0", cols0, "weight0", weight0),
                                                 ("cols1", cols1, "weight1", weight1)):
        if cols is None:
            continue
        _check_op_sets(("rows", cols_name), rows, cols)
        acc = accumulate_dtype(rows.dtype)
        check_tensor(weight_name, weight, (acc,), str(acc).removeprefix("torch."))
        check_like(weight_name, weight, rows, "rows")
        check_shape(weight_name, weight, (rows.shape[0], rows.shape[1], cols.shape[1]), "(G, R, C)")
    _check_op_options(rows, bandwidth, kernel, distance_scale, eps)
    if distances is not None:
        acc = accumulate_dtype(rows.dtype)
        check_tensor("distances", distances, (acc,), str(acc).removeprefix("torch."))
        check_like("distances", distances, rows, "rows")
        columns = cols0.shape[1] + (cols1.shape[1] if cols1 is not None else 0)
        check_shape("distances", distances, (rows.shape[0], rows.shape[1], columns), "(G, R, C0 + C1)")
        if rows.shape[2] <= 64:
            raise ValueError(f"distances are kept only for D > 64 (the wide layout); got D={rows.shape[2]}")


def check_eps(eps, dtype: Optional[torch.dtype] = None) -> float:
    """eps a number >= 0 (finite in `dtype` where given); the ops check it again in their dtype."""
    if isinstance(eps, bool) or not isinstance(eps, (Real, torch.SymFloat)) or not 0 <= eps < math.inf:
        raise ValueError(f"eps must be a finite number >= 0; got {eps!r}")
    if dtype is not None:
        check_scalar("eps", eps, dtype, minimum=0.0, strict=False)
    return float(eps) if isinstance(eps, Real) else eps


def resolve_distance_scale(distance_scale: DistanceScale, dim: int) -> float:
    """None -> 1, "dim" -> 1/D (IMM, paper Sec. 3.6), or a positive finite float."""
    if distance_scale is None:
        return 1.0
    if isinstance(distance_scale, str):
        if distance_scale != "dim":
            raise ValueError(f"distance_scale must be None, 'dim' or a positive float; got {distance_scale!r}")
        return 1.0 / dim
    if (isinstance(distance_scale, bool) or not isinstance(distance_scale, (Real, torch.SymFloat))
            or not _positive_finite(distance_scale)):
        raise ValueError(f"distance_scale must be None, 'dim' or a positive finite float; got {distance_scale!r}")
    return float(distance_scale) if isinstance(distance_scale, Real) else distance_scale


def bandwidth_table(bandwidth: Bandwidth, groups: int, kernel: str, device: torch.device,
                    dtype: torch.dtype, check_values: bool = True) -> torch.Tensor:
    """Bandwidths as a contiguous (G, K) tensor in the accumulation dtype.

    Accepted: a float (one kernel); a sequence of K floats (K kernels, summed); a tensor of shape ()
    (one bandwidth for every set), (G,) (one per set: IMM's time-dependent kernel) or (G, K).
    Bandwidths are constants: no gradient flows to them. The energy kernel has no bandwidth: its
    table is a single column of ones whatever was passed. The values of a tensor are checked
    (in `dtype`) with check_values=True in eager mode; the ops check them again in every mode.
    """
    if kernel == "energy":
        return torch.ones(groups, 1, device=device, dtype=dtype)
    if isinstance(bandwidth, torch.Tensor):
        if bandwidth.requires_grad:
            raise ValueError("bandwidth must not require grad: gradients with respect to the bandwidth "
                             "are not computed (pass bandwidth.detach())")
        if bandwidth.is_complex() or not (bandwidth.is_floating_point() or bandwidth.dtype in (
                torch.int32, torch.int64)):
            raise TypeError(f"bandwidth must be a real tensor; got dtype {bandwidth.dtype}")
        if bandwidth.device != device and (bandwidth.numel() > 1 or bandwidth.device.type != "cpu"):
            raise ValueError(f"bandwidth must be on the device of x ({device}); got {bandwidth.device}")
        table = bandwidth.to(device=device, dtype=dtype)
        if table.dim() == 0:
            table = table.reshape(1, 1).expand(groups, 1)
        elif table.dim() == 1:
            if table.shape[0] != groups:
                raise ValueError(f"bandwidth of shape (G,) must have G = {groups} entries; got {table.shape[0]}")
            table = table.reshape(groups, 1)
        elif table.dim() == 2:
            if table.shape[0] != groups:
                raise ValueError(f"bandwidth of shape (G, K) must have G = {groups} rows; got {table.shape[0]}")
        else:
            raise ValueError(f"bandwidth tensor must have shape (), (G,) or (G, K); got {tuple(table.shape)}")
        if check_values and not torch.compiler.is_compiling():
            check_finite_values("bandwidth", table, positive=True)
    else:
        values = [bandwidth] if isinstance(bandwidth, (Real, torch.SymFloat)) else bandwidth
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise TypeError(f"bandwidth must be a float, a sequence of floats or a tensor; got {bandwidth!r}")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (Real, torch.SymFloat)):
                raise TypeError(f"bandwidth values must be real numbers; got {v!r}")
            if not _positive_finite(v):
                raise ValueError(f"bandwidth must be positive and finite; got {v!r}")
            if check_values and not torch.compiler.is_compiling():
                check_scalar("bandwidth", v, dtype, minimum=0.0)
        table = torch.tensor([float(v) for v in values], device=device, dtype=dtype).expand(groups, -1)
    if table.shape[1] > MAX_BANDWIDTHS or table.shape[1] == 0:
        raise ValueError(f"bandwidth: between 1 and {MAX_BANDWIDTHS} bandwidths per set; got {table.shape[1]}")
    return table.contiguous()
