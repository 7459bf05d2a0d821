"""The (B, ..., C) token layout shared by the norm + modulate and gate + residual ops (csrc/common/
token_shape.h): x's rows of C channels, per-sample (B, C) vectors, the per-chunk partials their
backwards sum in a fixed order, and the argument checks and dtype promotion both ops run."""
from __future__ import annotations

from typing import Tuple

import torch

from .checks import accumulate_dtype, check_like, check_tensor
from .device import kernel_device_type

Tensor = torch.Tensor

# Tokens per chunk of the backward's per-sample sums (their summation order, so fixed per device).
CHUNK_TOKENS = {"cpu": 32, "cuda": 16}


def rows_shape(x: Tensor) -> Tuple[int, int, int]:
    """x (B, ..., C) as (batch, tokens, channels)."""
    batch, channels = x.shape[0], x.shape[-1]
    return batch, x.numel() // (batch * channels), channels


def per_sample_view(v: Tensor, x: Tensor) -> Tensor:
    """(B, C) as (B, 1, ..., 1, C), broadcasting against x (B, ..., C)."""
    return v.reshape((v.shape[0],) + (1,) * (x.dim() - 2) + (v.shape[-1],))


def token_sum(t: Tensor) -> Tensor:
    """(B, ..., C) summed over the token dims to (B, C)."""
    return t.reshape(t.shape[0], -1, t.shape[-1]).sum(1)


def chunk_partials(x: Tensor, parts: int) -> Tensor:
    batch, tokens, channels = rows_shape(x)
    chunks = -(-tokens // CHUNK_TOKENS[kernel_device_type(x)])
    return x.new_empty((batch, chunks, parts, channels), dtype=accumulate_dtype(x.dtype))


def check_activations(name: str, x) -> None:
    check_tensor(name, x)
    if x.dim() < 2 or 0 in x.shape:
        raise ValueError(f"{name} must have shape (B, ..., C) with every size >= 1; got {tuple(x.shape)}")


def check_per_sample(name: str, v, x: Tensor, x_name: str = "x") -> None:
    """v a (B, C) tensor on x's device, x (B, ..., C); of x's dtype as the kernels read it."""
    check_tensor(name, v)
    expected = (x.shape[0], x.shape[-1])
    if tuple(v.shape) != expected:
        raise ValueError(f"{name} must have shape (B, C) = {expected} for {x_name} of shape {tuple(x.shape)}; "
                         f"got {tuple(v.shape)}")
    check_like(name, v, x, x_name)


def check_like_activations(name: str, t, x: Tensor, x_name: str = "x") -> None:
    check_tensor(name, t)
    check_like(name, t, x, x_name, shape=True)


def check_one_dtype(x_name: str, x: Tensor, **others: Tensor) -> None:
    for name, t in others.items():
        check_like(name, t, x, x_name, device=False, dtype=True)


def promoted(*tensors: Tensor) -> Tuple[Tensor, ...]:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        if t.dtype != dtype:
            dtype = torch.promote_types(dtype, t.dtype)
    return tuple(t if t.dtype == dtype else t.to(dtype) for t in tensors)
