"""Checks shared by the metrics: feature sets as finite float64 (N, D) tensors on the CPU."""
from __future__ import annotations

import numpy as np
import torch


def as_features(name: str, value, *, min_rows: int = 2) -> torch.Tensor:
    """value (a tensor or numpy array of shape (N, D)) as float64 on the CPU; errors name the argument."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array; got {type(value).__name__}")
    if value.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D); got shape {tuple(value.shape)}")
    if not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64, torch.uint8)):
        raise TypeError(f"{name} must hold real numbers; got {value.dtype}")
    if value.shape[0] < min_rows or value.shape[1] < 1:
        raise ValueError(f"{name} needs at least {min_rows} rows and one column; got shape {tuple(value.shape)}")
    value = value.detach().to("cpu", torch.float64)
    if not torch.isfinite(value).all():
        raise ValueError(f"{name} holds NaN or inf")
    return value


def as_feature_pair(a_name: str, a, b_name: str, b, *, min_rows: int = 2):
    a, b = as_features(a_name, a, min_rows=min_rows), as_features(b_name, b, min_rows=min_rows)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{a_name} and {b_name} must have the same feature dimension; got {a.shape[1]} and {b.shape[1]}")
    return a, b
