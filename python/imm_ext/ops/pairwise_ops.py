"""torch.library custom ops over the compiled pairwise kernels, with fake and autograd kernels.

Three ops, all on (G, N, D) point sets and a (G, K) bandwidth table in the accumulation dtype:
  imm_ext::mmd_block_sums(x, y)        -> (G, 3): sum k(x, x'), sum k(y, y'), sum k(x, y), and the
      squared distances of x's points to x's and y's, (G, N, N + M), where keeps_distances (else empty)
  imm_ext::pairwise_kernel_matrix(x, y) -> (G, N, M) kernel matrix (dtype of x)
  imm_ext::pair_gradient(rows, cols0, w0, cols1, w1, distances=None)
      -> (G, R, D): sum_s sum_j w_s[g, i, j] dk(r_i, c^s_j)/dr_i, the backward of both ops above; given
      the distances the forward kept, it sums the gradient in one sweep over D instead of two.
The weights w_s may be any strided view (stride 0 for a per-set scalar), so the MMD backward is one
pass over each side and never materialises an N x M matrix. Tensors on a device without a compiled
kernel (CUDA when built without nvcc, MPS, ...) take the pure-PyTorch path of reference.py.
Each op and its fake kernel first run options.check_pair_op / check_pair_gradient_op: whoever calls
them (the public functions, torch.ops.imm_ext directly, a compiled graph) gets a ValueError or
TypeError naming the argument instead of a kernel reading out of bounds.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .. import _core
from . import reference
from .device import has_kernel, run_kernel
from .pairwise_checks import accumulate_dtype, check_pair_gradient_op, check_pair_op

Tensor = torch.Tensor


def _launch(mode: int, rows: Tensor, sets, bandwidth: Tensor, kernel: str, distance_scale: float,
            eps: float, out: Tensor, tail_rows: Optional[Tensor] = None, distances: Optional[Tensor] = None) -> None:
    """sets: list of (cols, weight or None); tail_rows (row sums) meet the last set alone; distances, kept
    by row sums and read by gradients; every tensor already on rows.device."""
    specs = []
    for cols, weight in sets:
        if weight is None:
            specs.append((cols.data_ptr(), cols.shape[1], 0, 0, 0, 0))
        else:
            specs.append((cols.data_ptr(), cols.shape[1], weight.data_ptr(), *weight.stride()))
    args = _core.pair_task_arguments(mode, str(rows.dtype).removeprefix("torch."), _core.KERNEL_CODES[kernel],
                                     rows.shape[0], rows.shape[2], rows.data_ptr(), rows.shape[1], specs,
                                     bandwidth.data_ptr(), bandwidth.shape[1], distance_scale, eps, out.data_ptr(),
                                     *((tail_rows.data_ptr(), tail_rows.shape[1]) if tail_rows is not None else (0, 0)),
                                     distances.data_ptr() if distances is not None else 0)
    run_kernel(_core._C.pair_task, rows.device, *args)


# ---------------------------------------------------------------------------------------------
# imm_ext::mmd_block_sums

def keeps_distances(x: Tensor, y: Tensor) -> bool:
    """Whether the MMD forward keeps the squared distances of x's points for its backward: where the
    wide layout runs on every backend (D > 64) and they are small next to x (IMM's groups of a few
    particles in thousands of dimensions: an eighth of a percent of x at M = 4, D = 3072)."""
    return has_kernel(x) and x.shape[2] > 64 and 16 * (x.shape[1] + y.shape[1]) <= x.shape[2]


@torch.library.custom_op("imm_ext::mmd_block_sums", mutates_args=())
def mmd_block_sums(x: Tensor, y: Tensor, bandwidth: Tensor, kernel: str, distance_scale: float,
                   eps: float) -> Tuple[Tensor, Tensor]:
    """Per-set sums of the three kernel blocks, (G, 3) in the accumulation dtype, and the kept squared
    distances (G, N, N + M) of x's points to x's and y's (an empty (0, 0, 0) tensor unless
    keeps_distances), which the backward reads instead of recomputing."""
    check_pair_op(x, y, bandwidth, kernel, distance_scale, eps)
    x, y, bandwidth = x.contiguous(), y.contiguous(), bandwidth.contiguous()
    acc = accumulate_dtype(x.dtype)
    g, n, m = x.shape[0], x.shape[1], y.shape[1]
    keep = keeps_distances(x, y)
    distances = torch.empty((g, n, n + m) if keep else (0, 0, 0), dtype=acc, device=x.device)
    if not has_kernel(x):
        blocks = [reference.kernel_matrix(a.to(acc), b.to(acc), bandwidth, kernel, distance_scale, eps)
                  for a, b in ((x, x), (y, y), (x, y))]
        return torch.stack([k.sum((1, 2)) for k in blocks], 1), distances
    # One task: x's rows against x and y, then y's (the tail rows) against y, a group at a time.
    row_sums = torch.empty(g, n + m, 2, dtype=acc, device=x.device)
    _launch(_core.MODE_ROW_SUMS, x, [(x, None), (y, None)], bandwidth, kernel, distance_scale, eps, row_sums, y,
            distances if keep else None)
    sums = torch.stack([row_sums[:, :n, 0].sum(1), row_sums[:, n:, 1].sum(1), row_sums[:, :n, 1].sum(1)], 1)
    return sums, distances


@mmd_block_sums.register_fake
def _(x, y, bandwidth, kernel, distance_scale, eps):
    check_pair_op(x, y, bandwidth, kernel, distance_scale, eps)
    acc = accumulate_dtype(x.dtype)
    kept = (x.shape[0], x.shape[1], x.shape[1] + y.shape[1]) if keeps_distances(x, y) else (0, 0, 0)
    return x.new_empty((x.shape[0], 3), dtype=acc), x.new_empty(kept, dtype=acc)


def _save_pair_inputs(ctx, inputs, output):
    """setup_context of both forward ops: they share the signature (x, y, bandwidth, options...)."""
    x, y, bandwidth, kernel, distance_scale, eps = inputs
    ctx.save_for_backward(x, y, bandwidth)
    ctx.options = (kernel, distance_scale, eps)


def _save_block_sums_inputs(ctx, inputs, output):
    """setup_context of mmd_block_sums: its inputs and the distances its forward kept."""
    x, y, bandwidth, kernel, distance_scale, eps = inputs
    ctx.save_for_backward(x, y, bandwidth, output[1])
    ctx.options = (kernel, distance_scale, eps)


def _mmd_block_sums_backward(ctx, grad, _grad_distances):
    x, y, bandwidth, kept = ctx.saved_tensors
    g, n, m = x.shape[0], x.shape[1], y.shape[1]
    # L = a * Sxx + b * Syy + c * Sxy with (a, b, c) = grad[:, 0..2]; symmetric blocks count twice.
    per_set = lambda col, factor, rows, cols: (factor * grad[:, col]).view(g, 1, 1).expand(g, rows, cols)
    grad_x = grad_y = None
    if ctx.needs_input_grad[0]:
        grad_x = pair_gradient(x, x, per_set(0, 2.0, n, n), y, per_set(2, 1.0, n, m), bandwidth, *ctx.options,
                               distances=kept if kept.numel() else None)
    if ctx.needs_input_grad[1]:
        grad_y = pair_gradient(y, y, per_set(1, 2.0, m, m), x, per_set(2, 1.0, m, n), bandwidth, *ctx.options)
    return grad_x, grad_y, None, None, None, None


mmd_block_sums.register_autograd(_mmd_block_sums_backward, setup_context=_save_block_sums_inputs)


# ---------------------------------------------------------------------------------------------
# imm_ext::pairwise_kernel_matrix

@torch.library.custom_op("imm_ext::pairwise_kernel_matrix", mutates_args=())
def pairwise_kernel_matrix(x: Tensor, y: Tensor, bandwidth: Tensor, kernel: str, distance_scale: float,
                           eps: float) -> Tensor:
    """(G, N, M) matrix k(x_i, y_j), summed over bandwidths, in the dtype of x."""
    check_pair_op(x, y, bandwidth, kernel, distance_scale, eps)
    x, y, bandwidth = x.contiguous(), y.contiguous(), bandwidth.contiguous()
    acc = accumulate_dtype(x.dtype)
    if not has_kernel(x):
        return reference.kernel_matrix(x.to(acc), y.to(acc), bandwidth, kernel, distance_scale, eps).to(x.dtype)
    out = torch.empty(x.shape[0], x.shape[1], y.shape[1], dtype=acc, device=x.device)
    _launch(_core.MODE_MATRIX, x, [(y, None)], bandwidth, kernel, distance_scale, eps, out)
    return out.to(x.dtype)


@pairwise_kernel_matrix.register_fake
def _(x, y, bandwidth, kernel, distance_scale, eps):
    check_pair_op(x, y, bandwidth, kernel, distance_scale, eps)
    return x.new_empty((x.shape[0], x.shape[1], y.shape[1]))


def _matrix_backward(ctx, grad):
    x, y, bandwidth = ctx.saved_tensors
    weight = grad.to(accumulate_dtype(x.dtype))
    grad_x = grad_y = None
    if ctx.needs_input_grad[0]:
        grad_x = pair_gradient(x, y, weight, None, None, bandwidth, *ctx.options)
    if ctx.needs_input_grad[1]:
        grad_y = pair_gradient(y, x, weight.transpose(1, 2), None, None, bandwidth, *ctx.options)
    return grad_x, grad_y, None, None, None, None


pairwise_kernel_matrix.register_autograd(_matrix_backward, setup_context=_save_pair_inputs)


# ---------------------------------------------------------------------------------------------
# imm_ext::pair_gradient

@torch.library.custom_op("imm_ext::pair_gradient", mutates_args=())
def pair_gradient(rows: Tensor, cols0: Tensor, weight0: Tensor, cols1: Optional[Tensor],
                  weight1: Optional[Tensor], bandwidth: Tensor, kernel: str, distance_scale: float,
                  eps: float, distances: Optional[Tensor] = None) -> Tensor:
    """sum_s sum_j w_s[g, i, j] * d k(rows_i, cols^s_j) / d rows_i, shaped and typed like rows.
    distances: the squared distances of rows to the columns of cols0 then cols1, (G, R, C0 + C1), as
    mmd_block_sums keeps them (D > 64); the kernel then skips the sweep over D that computes them."""
    check_pair_gradient_op(rows, cols0, weight0, cols1, weight1, bandwidth, kernel, distance_scale, eps, distances)
    rows, bandwidth = rows.contiguous(), bandwidth.contiguous()
    sets = [(cols0.contiguous(), weight0)]
    if cols1 is not None:
        sets.append((cols1.contiguous(), weight1))
    if not has_kernel(rows):
        return _fallback_gradient(rows, sets, bandwidth, kernel, distance_scale, eps)
    out = torch.empty_like(rows)
    _launch(_core.MODE_GRADIENT, rows, sets, bandwidth, kernel, distance_scale, eps, out,
            distances=None if distances is None else distances.contiguous())
    return out


@pair_gradient.register_fake
def _(rows, cols0, weight0, cols1, weight1, bandwidth, kernel, distance_scale, eps, distances=None):
    check_pair_gradient_op(rows, cols0, weight0, cols1, weight1, bandwidth, kernel, distance_scale, eps, distances)
    return torch.empty_like(rows, memory_format=torch.contiguous_format)


def _fallback_gradient(rows, sets, bandwidth, kernel, distance_scale, eps):
    """Analytic gradient in plain PyTorch: phi = c k'(d) / ||r - c|| (0 inside the eps clamp)."""
    acc = accumulate_dtype(rows.dtype)
    r = rows.to(acc)
    grad = torch.zeros_like(r)
    h = bandwidth[:, None, None, :]
    for cols, weight in sets:
        c = cols.to(acc)
        norm = reference.distances(r, c)
        slope = reference.kernel_slope(distance_scale * norm[..., None], h, kernel).sum(-1)
        phi = torch.where(norm <= eps, torch.zeros_like(norm), distance_scale * slope / norm) * weight
        grad += phi.sum(-1, keepdim=True) * r - phi @ c
    return grad.to(rows.dtype)
