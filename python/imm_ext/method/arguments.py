"""Argument checking shared by the method modules: finite real settings, and time arguments.

Time arguments (t, s, r, eta, lambda) become float64 tensors, shaped to broadcast against data where
needed: every time quantity of the method is computed in float64 (imm-method.md §3.6, §9.13), since
near T the gap t - r is about 1e-7, below the float32 resolution of t itself. Data keep their dtype.
Bad input raises a ValueError or TypeError naming the argument.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Union

import torch

TimeLike = Union[float, torch.Tensor]


def check_finite_real(name: str, value) -> float:
    """`value` as a float, if it is a finite real number (bool excluded)."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number; got {value!r}")
    return float(value)


def check_time_bounds(eps_t, T) -> tuple:
    """(eps_t, T) as floats, if 0 <= eps_t < T <= 1: the time range of training and sampling (§1)."""
    eps_t, T = check_finite_real("eps_t", eps_t), check_finite_real("T", T)
    if eps_t < 0:
        raise ValueError(f"eps_t must be >= 0; got {eps_t}")
    if T > 1:
        raise ValueError(f"T must be <= 1; got {T}")
    if eps_t >= T:
        raise ValueError(f"eps_t must be smaller than T; got eps_t={eps_t}, T={T}")
    return eps_t, T


def as_float64(value: TimeLike, name: str) -> torch.Tensor:
    """`value` as a float64 tensor on its own device (a Python number becomes a 0-d CPU tensor)."""
    if isinstance(value, torch.Tensor):
        if value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"{name} must be a real tensor; got dtype {value.dtype}")
        return value.to(torch.float64)
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number or a torch.Tensor; got {type(value).__name__}")
    return torch.tensor(float(value), dtype=torch.float64)


def broadcast_to_data(time: TimeLike, data: torch.Tensor, name: str) -> torch.Tensor:
    """A scalar or per-sample (B,) time as a float64 tensor of shape (B, 1, ..., 1) on data's device.

    The result broadcasts against `data` of shape (B, ...): one time per sample (or one for all).
    """
    time = as_float64(time, name).to(data.device)
    if time.dim() == 0:
        return time
    if time.dim() != 1 or data.dim() == 0 or time.shape[0] != data.shape[0]:
        batch = data.shape[0] if data.dim() else "its batch size"
        raise ValueError(f"{name} must be a scalar or have shape (B,) with B = {batch}, the data's batch "
                         f"size; got shape {tuple(time.shape)} for data of shape {tuple(data.shape)}")
    return time.reshape(-1, *([1] * (data.dim() - 1)))
