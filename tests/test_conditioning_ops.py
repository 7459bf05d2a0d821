"""imm_ext.ops.norm_modulate, gate_residual and timestep_embedding_pair: values and gradients against
the pure-PyTorch references of ops/block_reference.py, large activations, determinism, opcheck of the
backward ops, torch.compile of a whole conditioning path, the fallback path and bad input. Gradcheck
and the rest of the generic contract are tests/test_fused_op_contract.py's; CUDA vs CPU lives in
test_cuda.py."""
import pytest
import torch
from hypothesis import given, strategies as st

import imm_ext
from imm_ext.ops import (conditioning_ops, gate_residual, gate_residual_reference, norm_modulate,
                         norm_modulate_reference, timestep_embedding, timestep_embedding_pair,
                         timestep_embedding_pair_reference)

from conftest import TOLERANCE

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
NORMS = ["layer", "rms"]
# The kernels are compared with the reference evaluated in float64 on the same inputs and rounded
# to the inputs' dtype; both round once, so they may differ by one step of that dtype: for bfloat16
# up to 2^-7 relative (TOLERANCE's 2e-3 covers a float16 step).
ONE_STEP = {**TOLERANCE, torch.bfloat16: dict(rtol=8e-3, atol=1e-4)}


def _data(shape, dtype=torch.float64, seed=0, mean=0.0, std=1.0):
    gen = torch.Generator().manual_seed(seed)
    return (mean + std * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(dtype)


def _times(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return 1000 * torch.rand(n, generator=gen, dtype=torch.float64)


def _assert_close(actual, expected):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, **ONE_STEP[expected.dtype])


def _value_and_grads(fn, inputs, cotangent):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    return out, torch.autograd.grad(out, leaves, cotangent)


def _exact_value_and_grads(reference, inputs, cotangent):
    """The reference in float64, value and gradients rounded to the dtypes of the kernel's results."""
    out, grads = _value_and_grads(reference, [t.double() for t in inputs], cotangent.double())
    dtype = cotangent.dtype
    return out.to(dtype), [g.to(dtype) for g in grads]


def _norm_inputs(shape, dtype, seed):
    b, c = shape[0], shape[-1]
    return _data(shape, dtype, seed), _data((b, c), dtype, seed + 1), _data((b, c), dtype, seed + 2, std=0.5)


# ---------------------------------------------------------------------------------------------
# norm_modulate

def _assert_norm_grads_close(got, want, x, norm, eps):
    """grad_x = rstd * (terms of size |grad|) may cancel to ~0 (exactly 0 for C = 1), so its
    rounding error is compared at the scale of rstd: atol grows with the largest rstd of x's rows."""
    x64 = x.double()
    centred = x64 if norm == "rms" else x64 - x64.mean(-1, keepdim=True)
    rstd = float(torch.rsqrt(centred.square().mean(-1) + eps).max())
    tolerance = ONE_STEP[want[0].dtype]
    torch.testing.assert_close(got[0], want[0], rtol=tolerance["rtol"], atol=tolerance["atol"] * max(1.0, rstd))
    for g, w in zip(got[1:], want[1:]):
        _assert_close(g, w)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dtype", DTYPES)
@given(batch=st.integers(1, 3), tokens=st.lists(st.integers(1, 6), min_size=0, max_size=2),
       channels=st.integers(1, 40), seed=st.integers(0, 100))
def test_norm_modulate_matches_reference(norm, dtype, batch, tokens, channels, seed):
    shape = (batch, *tokens, channels)
    inputs = _norm_inputs(shape, dtype, seed)
    cotangent = _data(shape, dtype, seed + 3)
    got, got_grads = _value_and_grads(lambda *a: norm_modulate(*a, norm=norm), inputs, cotangent)
    want, want_grads = _exact_value_and_grads(lambda *a: norm_modulate_reference(*a, norm=norm), inputs, cotangent)
    _assert_close(got, want)
    _assert_norm_grads_close(got_grads, want_grads, inputs[0], norm, 1e-6)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norm_modulate_dit_layout(norm, dtype):
    """A non-contiguous x, and shift/scale as chunks of one adaLN projection (strided views), with
    tokens not a multiple of the backward's chunk."""
    b, t, c = 3, 70, 48
    x = _data((b, c, t), dtype, 1).transpose(1, 2)
    shift, scale = _data((b, 2 * c), dtype, 2).chunk(2, dim=1)
    cotangent = _data((b, t, c), dtype, 3)
    assert not (x.is_contiguous() or shift.is_contiguous())
    got, got_grads = _value_and_grads(lambda *a: norm_modulate(*a, norm=norm, eps=1e-5), (x, shift, scale), cotangent)
    want, want_grads = _exact_value_and_grads(lambda *a: norm_modulate_reference(*a, norm=norm, eps=1e-5),
                                              (x, shift, scale), cotangent)
    _assert_close(got, want)
    _assert_norm_grads_close(got_grads, want_grads, x, norm, 1e-5)


@pytest.mark.parametrize("dtype,mean,bound", [(torch.float32, 1e4, 1e-3), (torch.float64, 1e8, 1e-7)])
def test_norm_modulate_large_activations(dtype, mean, bound):
    """Rows with mean >> std = 1: the statistics are taken of deviations (no E[x^2] - E[x]^2), so the
    error stays near the input's own resolution (the spacing of float32 at 1e4 is 1e-3, of float64
    at 1e8 1.5e-8), and in float32 below that of PyTorch's LayerNorm on the same inputs."""
    x = _data((2, 64, 384), dtype, 4, mean=mean)
    shift, scale = _data((2, 384), dtype, 5), _data((2, 384), dtype, 6, std=0.1)
    cotangent = _data(x.shape, dtype, 7)
    exact = _value_and_grads(norm_modulate_reference, (x.double(), shift.double(), scale.double()),
                             cotangent.double())

    def errors(fn):  # of y, grad_x and grad_scale (grad_shift is a plain sum of the cotangent)
        y, (grad_x, _, grad_scale) = _value_and_grads(fn, (x, shift, scale), cotangent)
        return [float((a.detach().double() - b).abs().max()) for a, b in zip(
            (y, grad_x, grad_scale), (exact[0].detach(), exact[1][0], exact[1][2]))]

    ours = errors(norm_modulate)
    assert ours[0] < bound and ours[1] < 10 * bound and ours[2] < 100 * bound
    if dtype == torch.float32:
        assert all(a < b for a, b in zip(ours, errors(norm_modulate_reference)))


def test_norm_modulate_constant_rows_and_mixed_dtypes():
    x = torch.full((2, 3, 5), 7.0)
    shift, scale = _data((2, 5), torch.float32, 8), _data((2, 5), torch.float32, 9)
    leaf = x.clone().requires_grad_()
    y = norm_modulate(leaf, shift, scale)
    torch.testing.assert_close(y, shift[:, None].expand_as(y))  # xhat = 0 on a constant row
    y.sum().backward()
    assert torch.isfinite(leaf.grad).all()
    # Mixed dtypes are promoted as the reference promotes them.
    args = (_data((2, 3, 5), torch.bfloat16, 10), _data((2, 5), torch.float16, 11), _data((2, 5), torch.float32, 12))
    got = norm_modulate(*args, norm="rms")
    assert got.dtype == torch.float32
    _assert_close(got, norm_modulate_reference(*args, norm="rms"))


# ---------------------------------------------------------------------------------------------
# gate_residual

@pytest.mark.parametrize("dtype", DTYPES)
@given(batch=st.integers(1, 3), tokens=st.lists(st.integers(1, 6), min_size=0, max_size=2),
       channels=st.integers(1, 40), seed=st.integers(0, 100))
def test_gate_residual_matches_reference(dtype, batch, tokens, channels, seed):
    shape = (batch, *tokens, channels)
    inputs = (_data(shape, dtype, seed), _data((batch, channels), dtype, seed + 1), _data(shape, dtype, seed + 2))
    cotangent = _data(shape, dtype, seed + 3)
    got, got_grads = _value_and_grads(gate_residual, inputs, cotangent)
    want, want_grads = _exact_value_and_grads(gate_residual_reference, inputs, cotangent)
    _assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        _assert_close(g, w)


def test_gate_residual_layouts_and_partial_gradients():
    b, t, c = 2, 70, 24
    x = _data((b, c, t), torch.float32, 13).transpose(1, 2)
    gate, _ = _data((b, 2 * c), torch.float32, 14).chunk(2, dim=1)
    y = _data((b, t, c), torch.float16, 15)  # promoted to float32
    got = gate_residual(x, gate, y)
    _assert_close(got, gate_residual_reference(x, gate, y))
    # Only x requires grad: its gradient is the incoming one.
    leaf = x.detach().requires_grad_()
    cotangent = _data((b, t, c), torch.float32, 16)
    gate_residual(leaf, gate, y).backward(cotangent)
    assert torch.equal(leaf.grad, cotangent)


# ---------------------------------------------------------------------------------------------
# timestep embeddings

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [1, 2, 7, 64, 256])
def test_timestep_embedding_pair_matches_reference(dtype, dim):
    c_t, c_s = _times(9, 17), _times(9, 18).float()  # c_s in float32: read as float64 like the reference
    got = timestep_embedding_pair(c_t, c_s, dim, dtype=dtype)
    want = timestep_embedding_pair_reference(c_t, c_s, dim, dtype=dtype)
    # Same float64 formula; cos/sin of arguments up to 1000 may differ by an ulp of the argument
    # between libm and PyTorch's vectorised versions, and that is all (then one rounding to dtype).
    tolerance = dict(rtol=0, atol=5e-13) if dtype == torch.float64 else ONE_STEP[dtype]
    for g, w in zip(got, want):
        assert g.dtype == dtype and g.shape == (9, dim)
        torch.testing.assert_close(g, w, **tolerance)
    torch.testing.assert_close(timestep_embedding(c_t, dim, dtype=dtype), got[0], rtol=0, atol=0)
    assert imm_ext.models.timestep_embedding is timestep_embedding


def test_timestep_embedding_pair_gradients():
    c_t, c_s = _times(6, 19), _times(6, 20)
    cotangents = _data((6, 33), seed=21), _data((6, 33), seed=22)

    def grads(fn):
        a, b = c_t.clone().requires_grad_(), c_s.clone().requires_grad_()
        e_t, e_s = fn(a, b, 33, max_period=100.0, dtype=torch.float64)
        return torch.autograd.grad((e_t * cotangents[0]).sum() + (e_s * cotangents[1]).sum(), (a, b))

    for g, w in zip(grads(timestep_embedding_pair), grads(timestep_embedding_pair_reference)):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# The op contract

@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck(dtype):
    ops = conditioning_ops
    x, shift, scale = _norm_inputs((2, 37, 6), dtype, 28)
    grad = _data(x.shape, dtype, 29)
    for rms in (False, True):
        torch.library.opcheck(ops.norm_modulate_op, (x.requires_grad_(), shift, scale.requires_grad_(), rms, 1e-6))
        stats = ops.norm_modulate_op(x, shift, scale, rms, 1e-6)[1]
        torch.library.opcheck(ops.norm_modulate_backward_op, (grad, x.detach(), stats, scale.detach(), rms, 1e-6))
    torch.library.opcheck(ops.gate_residual_op, (x.detach(), shift.requires_grad_(), grad.requires_grad_()))
    torch.library.opcheck(ops.gate_residual_backward_op, (grad.detach(), shift.detach(), x.detach()))
    c = _times(5, 30).requires_grad_()
    torch.library.opcheck(ops.timestep_embedding_op, (c, 7, 10_000.0, dtype))
    torch.library.opcheck(ops.timestep_embedding_backward_op, (_data((5, 7), dtype, 31), c.detach(), 10_000.0))


def _block(x, shift, scale, gate, c_t, c_s):
    """The conditioning path of a DiT block: embeddings -> modulated norm -> gated residual."""
    e_t, e_s = timestep_embedding_pair(c_t, c_s, x.shape[-1])
    h = norm_modulate(x, shift + e_t, scale, norm="layer")
    return gate_residual(x, gate * e_s, h.square()).sum()


def test_torch_compile_fullgraph_matches_eager():
    inputs = (*_norm_inputs((2, 40, 8), torch.float32, 32), _data((2, 8), torch.float32, 33), _times(2, 34),
              _times(2, 35))
    cotangent = torch.tensor(1.0)
    want, want_grads = _value_and_grads(_block, inputs, cotangent)
    got, got_grads = _value_and_grads(torch.compile(_block, fullgraph=True), inputs, cotangent)
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)


def test_custom_op_route_matches_eager_route():
    """The custom ops (the route under torch.compile), called eagerly, give the autograd.Function
    route's values and gradients bit for bit: the same kernels and gradient rules behind both."""
    ops = conditioning_ops
    inputs = (*_norm_inputs((2, 40, 8), torch.float32, 43), _data((2, 8), torch.float32, 44), _times(2, 45))
    cotangent = torch.tensor(1.0)

    def through_ops(x, shift, scale, gate, c):
        h = ops.norm_modulate_op(x, shift, scale, True, 1e-6)[0]
        return (ops.gate_residual_op(x, gate, h) * ops.timestep_embedding_op(c, 8, 1e4, torch.float32)[:, None]).sum()

    def through_functions(x, shift, scale, gate, c):
        h = norm_modulate(x, shift, scale, norm="rms")
        return (gate_residual(x, gate, h) * timestep_embedding(c, 8, 1e4)[:, None]).sum()

    got, got_grads = _value_and_grads(through_ops, inputs, cotangent)
    want, want_grads = _value_and_grads(through_functions, inputs, cotangent)
    assert torch.equal(got, want) and all(torch.equal(g, w) for g, w in zip(got_grads, want_grads))


def test_fallback_path_matches_kernels(monkeypatch):
    inputs = (*_norm_inputs((2, 40, 8), torch.float32, 36), _data((2, 8), torch.float32, 37), _times(2, 38),
              _times(2, 39))
    cotangent = torch.tensor(1.0)
    kernel = _value_and_grads(_block, inputs, cotangent)
    monkeypatch.setattr(conditioning_ops, "has_kernel", lambda t: False)
    fallback = _value_and_grads(_block, inputs, cotangent)
    torch.testing.assert_close(fallback[0], kernel[0])
    for g, w in zip(fallback[1], kernel[1]):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)  # float32 block: c's gradients too


def test_backward_is_deterministic_across_thread_counts():
    inputs = (*_norm_inputs((3, 100, 24), torch.float32, 40), _data((3, 24), torch.float32, 41))
    cotangent = _data((3, 100, 24), torch.float32, 42)

    def grads():
        x, shift, scale, gate = (t.clone().requires_grad_() for t in inputs)
        out = gate_residual(x, gate, norm_modulate(x, shift, scale))
        return torch.autograd.grad(out, (x, shift, scale, gate), cotangent)

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = grads()
        torch.set_num_threads(max(2, threads))
        parallel, again = grads(), grads()
    finally:
        torch.set_num_threads(threads)
    for s, p, a in zip(serial, parallel, again):
        assert torch.equal(s, p) and torch.equal(p, a)


# ---------------------------------------------------------------------------------------------
# Bad input

X, V = torch.randn(2, 3, 4), torch.randn(2, 4)
C = torch.rand(3, dtype=torch.float64)
BAD_INPUTS = [
    (norm_modulate, (X.long(), V, V), {}, TypeError, "x must be float32"),
    (norm_modulate, ([1.0], V, V), {}, TypeError, "x must be a torch.Tensor"),
    (norm_modulate, (X[0, 0], V, V), {}, ValueError, "x must have shape"),
    (norm_modulate, (X[:, :0], V, V), {}, ValueError, "x must have shape"),
    (norm_modulate, (X, V[:, :3], V), {}, ValueError, "shift must have shape"),
    (norm_modulate, (X, V, V[:1]), {}, ValueError, "scale must have shape"),
    (norm_modulate, (X, V, V.int()), {}, TypeError, "scale must be float32"),
    (norm_modulate, (X, V, V.to("meta")), {}, ValueError, "scale must be on the device"),
    (norm_modulate, (X, V, V), dict(norm="batch"), ValueError, "norm must be one of"),
    (norm_modulate, (X, V, V), dict(eps=0.0), ValueError, "eps"),
    (norm_modulate, (X, V, V), dict(eps=float("nan")), ValueError, "eps"),
    (gate_residual, (X, V, X[..., :3]), {}, ValueError, "y must have the shape"),
    (gate_residual, (X, V, X.to("meta")), {}, ValueError, "y must be on the device"),
    (gate_residual, (X, V.T, X), {}, ValueError, "gate must have shape"),
    (gate_residual, (X, V.bool(), X), {}, TypeError, "gate must be float32"),
    (gate_residual, (X, V, X.to(torch.complex64)), {}, TypeError, "y must be float32"),
    (timestep_embedding_pair, (C[:, None], C, 8), {}, ValueError, r"c_t must have shape \(B,\)"),
    (timestep_embedding_pair, (C, C.long(), 8), {}, TypeError, "c_s must be a floating-point"),
    (timestep_embedding_pair, (C, C[:2], 8), {}, ValueError, "c_s must have the shape of c_t"),
    (timestep_embedding_pair, (C, C.to("meta"), 8), {}, ValueError, "c_s must be on the device"),
    (timestep_embedding_pair, (C, C, 0), {}, ValueError, "dim must be a positive int"),
    (timestep_embedding_pair, (C, C, 8.0), {}, ValueError, "dim must be a positive int"),
    (timestep_embedding_pair, (C, C, 8), dict(max_period=float("inf")), ValueError, "max_period"),
    (timestep_embedding_pair, (C, C, 8), dict(dtype=torch.int32), TypeError, "dtype must be"),
    (timestep_embedding, (C[:0], 8), {}, ValueError, "c must have shape"),
]


@pytest.mark.parametrize("fn,args,kwargs,error,match", BAD_INPUTS)
def test_bad_input(fn, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        fn(*args, **kwargs)
