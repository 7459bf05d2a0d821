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
device without a compiled kernel take a pure-PyTorch path.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Optional, Tuple

import torch

from .. import _core
from .device import has_kernel, run_kernel
from .options import SUPPORTED_DTYPES, accumulate_dtype

Tensor = torch.Tensor


def _dtype_code(dtype: torch.dtype) -> int:
    return _core.DTYPE_CODES[str(dtype).removeprefix("torch.")]


def _per_sample(x: Tensor) -> int:
    return x[0].numel() if x.shape[0] else 0


def _per_sample_view(c: Tensor, x: Tensor, repeats: int = 1) -> Tensor:
    """(G,) coefficients as a (B, 1, ..., 1) tensor broadcasting against x."""
    return c.repeat_interleave(repeats).reshape((x.shape[0],) + (1,) * (x.dim() - 1))


# ---------------------------------------------------------------------------------------------
# imm_ext::interpolant_pair

@torch.library.custom_op("imm_ext::interpolant_pair", mutates_args=())
def interpolant_pair_op(x: Tensor, noise: Tensor, coefficients: Tensor, particles: int) -> Tuple[Tensor, Tensor]:
    """(x_t, x_r) in x's dtype; coefficients a float64 (B / particles, 4) table."""
    x, noise, coefficients = x.contiguous(), noise.contiguous(), coefficients.contiguous()
    if not has_kernel(x):
        acc = accumulate_dtype(x.dtype)
        xa, na, c = x.to(acc), noise.to(acc), coefficients.to(acc)
        col = lambda k: _per_sample_view(c[:, k], x, particles)
        return ((col(0) * xa + col(1) * na).to(x.dtype), (col(2) * xa + col(3) * na).to(x.dtype))
    x_t, x_r = torch.empty_like(x), torch.empty_like(x)
    run_kernel(_core._C.interpolant_pair, x.device, _dtype_code(x.dtype), x.shape[0], _per_sample(x), particles,
         x.data_ptr(), noise.data_ptr(), coefficients.data_ptr(), x_t.data_ptr(), x_r.data_ptr())
    return x_t, x_r


@interpolant_pair_op.register_fake
def _(x, noise, coefficients, particles):
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
    run_kernel(_core._C.sampler_step, x.device, _dtype_code(x.dtype), _dtype_code(g_cond.dtype), x.shape[0],
         _per_sample(x), x.data_ptr(), g_cond.data_ptr(), 0 if g_uncond is None else g_uncond.data_ptr(),
         c_skip.data_ptr(), c_out.data_ptr(), float(guidance), out.data_ptr())
    return out


@sampler_step_op.register_fake
def _(x, g_cond, g_uncond, c_skip, c_out, guidance):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# ---------------------------------------------------------------------------------------------
# Public wrappers: argument checks, then the ops.

def _check_data(name: str, t, like: Optional[Tensor] = None, same_dtype: bool = True) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must be float32, float64, bfloat16 or float16; got {t.dtype}")
    if t.dim() < 1 or t.shape[0] == 0:
        raise ValueError(f"{name} must have shape (B, ...) with B >= 1; got {tuple(t.shape)}")
    if like is not None:
        if t.device != like.device:
            raise ValueError(f"{name} must be on the device of x ({like.device}); got {t.device}")
        if t.shape != like.shape:
            raise ValueError(f"{name} must have the shape of x {tuple(like.shape)}; got {tuple(t.shape)}")
        if same_dtype and t.dtype != like.dtype:
            raise TypeError(f"{name} must have the dtype of x ({like.dtype}); got {t.dtype}")


def _coefficient(name: str, c, size: int, device: torch.device) -> Tensor:
    """A (size,) float64 constant on `device`; finite values checked outside torch.compile."""
    if not isinstance(c, torch.Tensor):
        raise TypeError(f"{name} must be a float64 tensor of shape ({size},); got {type(c).__name__}")
    if c.is_complex() or not c.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor; got dtype {c.dtype}")
    if c.requires_grad:
        raise ValueError(f"{name} must not require grad: no gradient flows to the coefficients "
                         f"(pass {name}.detach())")
    if c.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},); got {tuple(c.shape)}")
    if c.device != device:
        raise ValueError(f"{name} must be on the device of x ({device}); got {c.device}")
    c = c.to(torch.float64)
    if not torch.compiler.is_compiling() and not bool(torch.isfinite(c).all()):
        raise ValueError(f"{name} must be finite")
    return c


def interpolant_pair(x: Tensor, noise: Tensor, alpha_t: Tensor, sigma_t: Tensor, alpha_r: Tensor,
                     sigma_r: Tensor, particles: int) -> Tuple[Tensor, Tensor]:
    """x_t = alpha_t x + sigma_t noise and x_r = alpha_r x + sigma_r noise in one pass (IMM §3.4).

    x, noise: (B, ...) of one dtype and device; alpha_t, sigma_t, alpha_r, sigma_r: (G,) tensors
    (computed in float64) with G = B / particles, sample b using group b // particles. Differentiable
    in x and noise (not in the coefficients).
    """
    _check_data("x", x)
    _check_data("noise", noise, like=x)
    if isinstance(particles, bool) or not isinstance(particles, int) or particles < 1:
        raise ValueError(f"particles must be a positive int; got {particles!r}")
    if x.shape[0] % particles:
        raise ValueError(f"batch size B = {x.shape[0]} must be divisible by particles = {particles}")
    groups = x.shape[0] // particles
    coefficients = torch.stack([_coefficient(name, c, groups, x.device) for name, c in (
        ("alpha_t", alpha_t), ("sigma_t", sigma_t), ("alpha_r", alpha_r), ("sigma_r", sigma_r))], 1)
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
    _check_data("g_cond", g_cond, like=x, same_dtype=False)
    w = 1.0
    if g_uncond is not None:
        _check_data("g_uncond", g_uncond, like=x, same_dtype=False)
        if isinstance(guidance, bool) or not isinstance(guidance, Real) or not math.isfinite(guidance):
            raise ValueError(f"guidance must be a finite float when g_uncond is given; got {guidance!r}")
        w = float(guidance)
    c_skip = _coefficient("c_skip", c_skip, x.shape[0], x.device)
    c_out = _coefficient("c_out", c_out, x.shape[0], x.device)
    return sampler_step_op(x, g_cond, g_uncond, c_skip, c_out, w)
