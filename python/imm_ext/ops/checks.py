"""Argument checks shared by every op family: tensors, dtypes, devices, and scalars in their dtype.

Each family keeps its own checks in one function next to its ops (pairwise_checks.py for the
pairwise kernels, `_check_*` in the other *_ops.py files, with the (B, ..., C) layout's shared checks in
token_rows.py); those functions run inside the custom ops' bodies, so they hold for direct
`torch.ops.imm_ext.*` calls and under torch.compile as well as for the public functions. They are
built from the helpers here, which look only at metadata (no host-device synchronisation), except
`require_all` and `check_finite_values`, which read a tensor's values (on a GPU without waiting for them).

Scalars are checked in the dtype the kernel computes with: a Python float that is fine in float64
can round to 0 or overflow to inf in float32.
"""
from __future__ import annotations

import math
import struct
from numbers import Real
from typing import Optional, Sequence

import torch
from torch._subclasses.fake_tensor import is_fake

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_DTYPE_NAMES = "float32, float64, bfloat16 or float16"


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other supported dtype accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    """`value` if it is one of the strings `choices`, else a ValueError naming the argument."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_tensor(name: str, t, dtypes=SUPPORTED_DTYPES, dtype_names: str = _DTYPE_NAMES) -> None:
    """TypeError unless t is a torch.Tensor of one of `dtypes`."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must be {dtype_names}; got {t.dtype}")


def check_like(name: str, t: torch.Tensor, like: torch.Tensor, like_name: str, *, device: bool = True,
               dtype: bool = False, shape: bool = False) -> None:
    """t on the device of `like` (and of its dtype and shape, where asked)."""
    if device and t.device != like.device:
        raise ValueError(f"{name} must be on the device of {like_name} ({like.device}); got {t.device}")
    if dtype and t.dtype != like.dtype:
        raise TypeError(f"{name} must have the dtype of {like_name} ({like.dtype}); got {t.dtype}")
    if shape and t.shape != like.shape:
        raise ValueError(f"{name} must have the shape of {like_name} {tuple(like.shape)}; got {tuple(t.shape)}")


def check_shape(name: str, t: torch.Tensor, expected: tuple, what: str) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {what} = {tuple(expected)}; got {tuple(t.shape)}")


def check_real(name: str, value, what: str = "a real number") -> None:
    """ValueError unless value is a real number (not bool), as the ops have always raised for a bad
    scalar option. Safe to trace: no value is read."""
    if isinstance(value, bool) or not isinstance(value, (Real, torch.SymFloat, torch.SymInt)):
        raise ValueError(f"{name} must be {what}; got {value!r}")


def check_int(name: str, value, minimum: int = 1) -> int:
    """`value` if it is an int >= minimum (bool excluded), else a ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {what}; got {value!r}")
    return value


def round_to(value: float, dtype: torch.dtype) -> float:
    """value as the kernel sees it in `dtype` (float64 or float32, the accumulation dtypes)."""
    value = float(value)
    if dtype == torch.float64 or not math.isfinite(value):
        return value
    try:
        return struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:  # beyond float32's range: the cast gives inf
        return math.copysign(math.inf, value)


def check_scalar(name: str, value, dtype: torch.dtype, *, minimum: Optional[float] = None,
                 strict: bool = True) -> float:
    """value as a float, finite in `dtype` and > minimum (>= minimum with strict=False).

    A symbolic value (torch.compile's dynamic shapes, in a fake kernel) passes unchecked here: the
    op body checks the real value when the compiled graph runs."""
    check_real(name, value)
    if isinstance(value, (torch.SymFloat, torch.SymInt)):
        return value
    used = round_to(value, dtype)
    bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum:g}"
    if not math.isfinite(used) or (minimum is not None and (used <= minimum if strict else used < minimum)):
        detail = f" (it is {used!r} in {str(dtype).removeprefix('torch.')}, the dtype it is used in)" \
            if used != value and math.isfinite(float(value)) else ""
        raise ValueError(f"{name} must be a finite number{bound}; got {value!r}{detail}")
    return float(value)


def require_all(ok: torch.Tensor, message: str) -> None:
    """ValueError(message) unless every element of the boolean tensor `ok` is true.

    On the CPU a false element raises at once. On a GPU reading the verdict back would stall the stream
    (a host-device synchronisation per training step), so the check is queued on the device instead
    (torch._assert_async): a false element fails the next synchronising call with a device-side
    assertion, never a silent NaN. Under torch.compile the assertion is part of the graph on every
    device (a RuntimeError naming the message), so the check neither vanishes nor breaks the graph.
    Meta and fake tensors outside a compiled graph (fake kernels) have no values."""
    if torch.compiler.is_compiling():
        torch._assert_async(ok.all(), message)
        return
    if ok.device.type == "meta" or ok.numel() == 0 or is_fake(ok):
        return
    if ok.device.type != "cpu":
        torch._assert_async(ok.all(), message)
    elif not bool(ok.all()):
        raise ValueError(message)


def check_finite_values(name: str, t: torch.Tensor, *, positive: bool = False) -> None:
    """Every value of t finite (and > 0 with positive=True), through require_all. Call it inside op
    bodies, which run with real tensors in every mode."""
    if t.device.type == "meta" or t.numel() == 0 or is_fake(t):
        return
    ok = torch.isfinite(t)
    if positive:
        ok &= t > 0
    require_all(ok, f"{name} must be {'positive and ' if positive else ''}finite "
                    f"(in {str(t.dtype).removeprefix('torch.')}, the dtype it is used in)")
