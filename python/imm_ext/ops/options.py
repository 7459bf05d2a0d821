"""Argument checking and normalisation shared by the pairwise-kernel ops.

Every public op funnels its arguments through here, so that bad input fails the same way everywhere:
a ValueError or TypeError whose message names the offending argument, raised before any kernel runs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Optional, Sequence, Union

import torch

from .._core import KERNEL_CODES

KERNELS = tuple(KERNEL_CODES)
ESTIMATORS = ("biased", "unbiased")
REDUCTIONS = ("mean", "sum", "none")
SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
MAX_BANDWIDTHS = 16

Bandwidth = Union[float, Sequence[float], torch.Tensor]
DistanceScale = Union[None, str, float]


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other supported dtype accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


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


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_point_sets(x, y) -> PairInputs:
    """Validate shapes, dtypes and devices of x (N, D)|(G, N, D) and y (M, D)|(G, M, D)."""
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(
                f"{name} must be float32, float64, bfloat16 or float16; got {t.dtype}")
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
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same number of sets G; got {x.shape[0]} and {y.shape[0]}")
    if x.shape[2] != y.shape[2]:
        raise ValueError(f"x and y must have the same dimension D; got {x.shape[2]} and {y.shape[2]}")
    if x.shape[2] == 0:
        raise ValueError("x and y must have D >= 1")
    if x.shape[1] == 0:
        raise ValueError("x must hold at least one point (N >= 1)")
    if y.shape[1] == 0:
        raise ValueError("y must hold at least one point (M >= 1)")
    if x.shape[0] == 0:
        raise ValueError("x and y must hold at least one set (G >= 1)")
    if x.dtype != y.dtype:
        common = torch.promote_types(x.dtype, y.dtype)
        x, y = x.to(common), y.to(common)
    return PairInputs(x.contiguous(), y.contiguous(), batched)


def check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, Real) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0; got {eps!r}")
    return float(eps)


def resolve_distance_scale(distance_scale: DistanceScale, dim: int) -> float:
    """None -> 1, "dim" -> 1/D (IMM, paper Sec. 3.6), or a positive finite float."""
    if distance_scale is None:
        return 1.0
    if isinstance(distance_scale, str):
        if distance_scale != "dim":
            raise ValueError(f"distance_scale must be None, 'dim' or a positive float; got {distance_scale!r}")
        return 1.0 / dim
    if (isinstance(distance_scale, bool) or not isinstance(distance_scale, Real)
            or not math.isfinite(distance_scale) or distance_scale <= 0):
        raise ValueError(f"distance_scale must be None, 'dim' or a positive finite float; got {distance_scale!r}")
    return float(distance_scale)


def bandwidth_table(bandwidth: Bandwidth, groups: int, kernel: str, device: torch.device,
                    dtype: torch.dtype) -> torch.Tensor:
    """Bandwidths as a contiguous (G, K) tensor in the accumulation dtype.

    Accepted: a float (one kernel); a sequence of K floats (K kernels, summed); a tensor of shape ()
    (one bandwidth for every set), (G,) (one per set: IMM's time-dependent kernel) or (G, K).
    Bandwidths are constants: no gradient flows to them. The energy kernel has no bandwidth: its
    table is a single column of ones whatever was passed.
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
        if bandwidth.device != device and bandwidth.numel() > 1:
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
        if not torch.compiler.is_compiling():
            if not bool(torch.isfinite(table).all()) or not bool((table > 0).all()):
                raise ValueError("bandwidth must be positive and finite")
    else:
        values = [bandwidth] if isinstance(bandwidth, Real) else bandwidth
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise TypeError(f"bandwidth must be a float, a sequence of floats or a tensor; got {bandwidth!r}")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, Real):
                raise TypeError(f"bandwidth values must be real numbers; got {v!r}")
            if not math.isfinite(v) or v <= 0:
                raise ValueError(f"bandwidth must be positive and finite; got {v!r}")
        table = torch.tensor([float(v) for v in values], device=device, dtype=dtype).expand(groups, -1)
    if table.shape[1] > MAX_BANDWIDTHS or table.shape[1] == 0:
        raise ValueError(f"bandwidth: between 1 and {MAX_BANDWIDTHS} bandwidths per set; got {table.shape[1]}")
    return table.contiguous()
