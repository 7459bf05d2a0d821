"""Fused elementwise ops of the IMM training step and sampler (imm-method.md §3.4 and §4.4).

  imm_ext::interpolant_pair(x, noise, coefficients, particles) -> (x_t, x_r)
      x_t = alpha_t x + sigma_t noise,  x_r = alpha_r x + sigma_r noise, with coefficients a float64
      (G, 4) table [alpha_t, sigma_t, alpha_r, sigma_r] and sample b in group b // particles.
      One pass: x and noise are read once, both outputs written. The op is linear, so its backward
      is the same op on (grad_t, grad_r) with the table rearranged to [alpha_t, alpha_r, sigma_t,
      sigma_r]. No gradient flows to the coefficients (they are schedule constants).
  imm_ext::sampler_step(x, g_cond, g_uncond, c_skip, c_out, guidance) -> x_s
      x_s = c_skip x + c_out G, G = g_cond or g_uncond + guidance (g_cond - g_uncond), c_skip and c_out
      float64 (B,). The kernel accumulates in float64 for a float64 state, float32 otherwise; g may
      have another dtype than x (it is read in its own dtype), the output has x's dtype.
      Inference-only: no autograd formula is registered (it runs under torch.inference_mode).
Computation is in the accumulation dtype (float64 for float64, float32 otherwise). Tensors on a
device without a compiled kernel take a pure-PyTorch path. Both ops (and their fakes) run
`_check_interpolant_pair` / `_check_sampler_step` first: shapes, dtypes and devices the kernels
rely on, guidance finite in the accumulation dtype, and the coefficients finite (read in the op
body, so in every mode; under torch.compile too).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .. import _core
from .device import has_kernel, run_kernel
from .checks import (accumulate_dtype, check_finite_values, check_int, check_like, check_real, check_scalar,
                     check_shape, check_tensor)

Tensor = torch.Tensor

COEFFICIENTS = ("alpha_t", "sigma_t", "alpha_r", "sigma_r")  # the columns of interpolant_pair's table


def _per_sample(x: Tensor) -> int:
    return x[0].numel() if x.shape[0] else 0


def _per_sample_view(c: Tensor, x: Tensor, repeats: int = 1) -> Tensor:
    """(G,) coefficients as a (B, 1, ..., 1) tensor broadcasting against x."""
    return c.repeat_interleave(repeats).reshape((x.shape[0],) + (1,) * (x.dim() - 1))


# ---------------------------------------------------------------------------------------------
# Argument checks (the public functions and the ops)

def _check_data(name: str, t, like: Optional[Tensor] = None, same_dtype: bool = True) -> None:
    check_tensor(name, t)
    if t.dim() < 1 or t.shape[0] == 0:
        raise ValueError(f"{name} must have shape (B, ...) with B >= 1; got {tuple(t.shape)}")
    if like is not None:
        check_like(name, t, like, "x", shape=True, dtype=same_dtype)


def _check_coefficient_type(name: str, c, size: int, device: torch.device) -> None:
    """c a (size,) real floating tensor on `device` that needs no gradient (metadata only)."""
    check_tensor(name, c, (torch.float64, torch.float32, torch.bfloat16, torch.float16),
                 "a floating-point tensor")
    if c.requires_grad:
        raise ValueError(f"{name} must not require grad: no gradient flows to the coefficients "
                         f"(pass {name}.detach())")
    check_shape(name, c, (size,), "(G,)" if name in COEFFICIENTS else "(B,)")
    if c.device != device:
        raise ValueError(f"{name} must be on the device of x ({device}); got {c.device}")


def _check_float64_table(name: str, c: Tensor, shape: tuple, what: str, x: Tensor) -> None:
    check_tensor(name, c, (torch.float64,), "float64")
    check_shape(name, c, shape, what)
    check_like(name, c, x, "x")


def _groups(x: Tensor, particles) -> int:
    check_int("particles", particles, 1)
    if x.shape[0] % particles:
        raise ValueError(f"batch size B = {x.shape[0]} must be divisible by particles = {particles}")
    return x.shape[0] // particles


def _check_interpolant_pair(x, noise, coefficients, particles) -> None:
    _check_data("x", x)
    _check_data("noise", noise, like=x)
    groups = _groups(x, particles)
    check_tensor("coefficients", coefficients, (torch.float64,), "float64")
    check_like("coefficients", coefficients, x, "x")
    # Rows beyond the first G = B / particles are never read (tests/test_interpolant_ops.py's opcheck
    # passes a longer table); fewer would be read out of bounds.
    if coefficients.dim() != 2 or coefficients.shape[1] != 4 or coefficients.shape[0] < groups:
        raise ValueError(f"coefficients must have shape (G, 4) with G >= B / particles = {groups}; "
                         f"got {tuple(coefficients.shape)}")
    try:
        check_finite_values("coefficients", coefficients[:groups])
    except ValueError:  # name the column (in the forward's order; the backward's table is finite)
        bad = next(j for j in range(4) if not bool(torch.isfinite(coefficients[:groups, j]).all()))
        raise ValueError(f"{COEFFICIENTS[bad]} must be finite (column {bad} of coefficients)") from None


def _check_sampler_step(x, g_cond, g_uncond, c_skip, c_out, guidance) -> None:
    _check_data("x", x)
    _check_data("g_cond", g_cond, like=x, same_dtype=False)
    if g_uncond is not None:
        _check_data("g_uncond", g_uncond, like=x, same_dtype=False)
    for name, c in (("c_skip", c_skip), ("c_out", c_out)):
        _check_float64_table(name, c, (x.shape[0],), "(B,)", x)
        check_finite_values(name, c)
    check_scalar("guidance", guidance, accumulate_dtype(x.dtype))


# ---------------------------------------------------------------------------------------------
# imm_ext::interpolant_pair

@torch.library.custom_op("imm_ext::interpolant_pair", mutates_args=())
def interpolant_pair_op(x: Tensor, noise: Tensor, coefficients: Tensor, particles: int) -> Tuple[Tensor, Tensor]:
    """(x_t, x_r) in x's dtype; coefficients a float64 (B / particles, 4) table."""
    _check_interpolant_pair(x, noise, coefficients, particles)
    x, noise, coefficients = x.contiguous(), noise.contiguous(), coefficients.contiguous()
    if not has_kernel(x):
        acc = accumulate_dtype(x.dtype)
        xa, na, c = x.to(acc), noise.to(acc), coefficients.to(acc)
        col = lambda k: _per_sample_view(c[:, k], x, particles)
        return ((col(0) * xa + col(1) * na).to(x.dtype), (col(2) * xa + col(3) * na).to(x.dtype))
    x_t, x_r = torch.empty_like(x), torch.empty_like(x)
    run_kernel(_core._C.interpolant_pair, x.device, _core.dtype_code(x.dtype), x.shape[0], _per_sample(x), particles,
         x.data_ptr(), noise.data_ptr(), coefficients.data_ptr(), x_t.data_ptr(), x_r.data_ptr())
    return x_t, x_r


@interpolant_pair_op.register_fake
def _(x, noise, coefficients, particles):
    _check_interpolant_pair(x, noise, coefficients, particles)
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(x, memory_format=torch.contiguous_format))


def _interpolant_setup(ctx, inputs, output):
    _, _, coefficients, particles = inputs
    ctx.save_for_backward(coefficients)
    ctx.particles = particles


def _interpolant_backward(ctx, grad_t, grad_r):
    (coefficients,) = ctx.saved_tensors
    if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
        return None, None, None, None
    reference = grad_t if grad_t is not None else grad_r
    grad_t = torch.zeros_like(reference) if grad_t is None else grad_t
    grad_r = torch.zeros_like(reference) if grad_r is None else grad_r
    # grad_x = alpha_t g_t + alpha_r g_r, grad_noise = sigma_t g_t + sigma_r g_r.
    transposed = coefficients[:, [0, 2, 1, 3]]
    grad_x, grad_noise = interpolant_pair_op(grad_t, grad_r, transposed, ctx.particles)
    return (grad_x if ctx.needs_input_grad[0] else None,
            grad_noise if ctx.needs_input_grad[1] else None, None, None)


interpolant_pair_op.register_autograd(_interpolant_backward, setup_context=_interpolant_setup)


# ---------------------------------------------------------------------------------------------
# imm_ext::sampler_step

@torch.library.custom_op("imm_ext::sampler_step", mutates_args=())
def sampler_step_op(x: Tensor, g_cond: Tensor, g_uncond: Optional[Tensor], c_skip: Tensor, c_out: Tensor,
                    guidance: float) -> Tensor:
    """c_skip x + c_out G in x's dtype (inference-only: no autograd)."""
    _check_sampler_step(x, g_cond, g_uncond, c_skip, c_out, guidance)
    x, g_cond, c_skip, c_out = x.contiguous(), g_cond.contiguous(), c_skip.contiguous(), c_out.contiguous()
    g_uncond = None if g_uncond is None else g_uncond.contiguous().to(g_cond.dtype)
    if not has_kernel(x):
        acc = accumulate_dtype(x.dtype)
        g = g_cond.to(acc)
        if g_uncond is not None:
            g = g_uncond.to(acc) + guidance * (g - g_uncond.to(acc))
        out = _per_sample_view(c_skip.to(acc), x) * x.to(acc) + _per_sample_view(c_out.to(acc), x) * g
        return out.to(x.dtype)
    out = torch.empty_like(x)
    run_kernel(_core._C.sampler_step, x.device, _core.dtype_code(x.dtype), _core.dtype_code(g_cond.dtype), x.shape[0],
         _per_sample(x), x.data_ptr(), g_cond.data_ptr(), 0 if g_uncond is None else g_uncond.data_ptr(),
         c_skip.data_ptr(), c_out.data_ptr(), float(guidance), out.data_ptr())
    return out


@sampler_step_op.register_fake
def _(x, g_cond, g_uncond, c_skip, c_out, guidance):
    _check_sampler_step(x, g_cond, g_uncond, c_skip, c_out, guidance)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# ---------------------------------------------------------------------------------------------
# Public wrappers: what the ops cannot see (the coefficients before they are stacked), then the ops.

def interpolant_pair(x: Tensor, noise: Tensor, alpha_t: Tensor, sigma_t: Tensor, alpha_r: Tensor,
                     sigma_r: Tensor, particles: int) -> Tuple[Tensor, Tensor]:
    """x_t = alpha_t x + sigma_t noise and x_r = alpha_r x + sigma_r noise in one pass (IMM §3.4).

    x, noise: (B, ...) of one dtype and device; alpha_t, sigma_t, alpha_r, sigma_r: (G,) tensors
    (computed in float64) with G = B / particles, sample b using group b // particles. Differentiable
    in x and noise (not in the coefficients).
    """
    _check_data("x", x)
    check_tensor("noise", noise)
    groups = _groups(x, particles)
    named = tuple(zip(COEFFICIENTS, (alpha_t, sigma_t, alpha_r, sigma_r)))
    for name, c in named:
        _check_coefficient_type(name, c, groups, x.device)
    coefficients = torch.stack([c.to(torch.float64) for _, c in named], 1)
    return interpolant_pair_op(x, noise, coefficients, particles)


def sampler_step(x: Tensor, g_cond: Tensor, c_skip: Tensor, c_out: Tensor, g_uncond: Optional[Tensor] = None,
                 guidance: Optional[float] = None) -> Tensor:
    """x_s = c_skip x + c_out G with G = g_cond, or G = g_uncond + guidance (g_cond - g_uncond) (IMM §4.4).

    x: (B, ...) sampler state; g_cond, g_uncond: raw network outputs of x's shape (any supported
    dtype: a float32 network output with a float64 state is read as is); c_skip, c_out: (B,) tensors
    (computed in float64). Accumulates in float64 for a float64 state; returns x's dtype.
    Inference-only (no gradient). `guidance` is required with g_uncond and ignored without it.
    """
    _check_data("x", x)
    check_tensor("g_cond", g_cond)
    w = 1.0
    if g_uncond is not None:
        check_tensor("g_uncond", g_uncond)
        if guidance is None:
            raise ValueError("guidance must be a finite float when g_uncond is given; got None")
        check_real("guidance", guidance, "a finite float when g_uncond is given")
        w = guidance
    for name, c in (("c_skip", c_skip), ("c_out", c_out)):
        _check_coefficient_type(name, c, x.shape[0], x.device)
    return sampler_step_op(x, g_cond, g_uncond, c_skip.to(torch.float64), c_out.to(torch.float64), w)
