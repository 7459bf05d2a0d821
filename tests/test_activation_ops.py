"""imm_ext.ops.gelu_tanh: values and gradients against the pure-PyTorch reference of
ops/block_reference.py and torch's own gelu(approximate="tanh"), saturation and infinities, every CPU
instruction-set build, the fallback path and bad input. The generic contract (both routes, gradcheck,
opcheck, compile) is tests/test_fused_op_contract.py's; CUDA vs CPU on many shapes lives in
test_cuda.py."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, strategies as st

import imm_ext
from imm_ext.ops import activation_ops, gelu_tanh, gelu_tanh_reference

from conftest import TOLERANCE

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
# The kernel and the float64 reference rounded to the dtype may be one step of the dtype apart.
ONE_STEP = {**TOLERANCE, torch.bfloat16: dict(rtol=8e-3, atol=1e-4)}
FLOAT32_EPS = torch.finfo(torch.float32).eps


def _data(shape, dtype=torch.float64, seed=0, std=3.0):
    gen = torch.Generator().manual_seed(seed)
    return (std * torch.randn(tuple(shape), generator=gen, dtype=torch.float64)).to(dtype)


def _value_and_grad(fn, x, cotangent):
    leaf = x.detach().clone().requires_grad_()
    out = fn(leaf)
    return out, torch.autograd.grad(out, leaf, cotangent)[0]


def _exact_value_and_grad(x, cotangent):
    """The reference in float64, value and gradient rounded to x's dtype."""
    out, grad = _value_and_grad(gelu_tanh_reference, x.double(), cotangent.double())
    return out.to(x.dtype), grad.to(x.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@given(shape=st.lists(st.integers(0, 70), min_size=0, max_size=3), seed=st.integers(0, 100))
def test_matches_reference(dtype, shape, seed):
    """Random shapes, empty and odd sizes included (partial SIMD registers, 16-bit blocks)."""
    x, cotangent = _data(shape, dtype, seed), _data(shape, dtype, seed + 1, std=1.0)
    got, got_grad = _value_and_grad(gelu_tanh, x, cotangent)
    want, want_grad = _exact_value_and_grad(x, cotangent)
    assert got.dtype == dtype and got.shape == x.shape
    torch.testing.assert_close(got, want, **ONE_STEP[dtype])
    torch.testing.assert_close(got_grad, want_grad, **ONE_STEP[dtype])


def test_float32_within_a_few_ulps_of_torch():
    """On the DiT MLP's shape, threaded path: value and gradient within a few float32 ulps of the
    float64 truth (at the scale of max(|y|, 1)), and within torch's own error of torch's gelu (whose
    float32 gradient is up to ~30 ulps off: its 1 + tanh(u) cancels for negative x)."""
    x = _data((8, 256, 1536), torch.float32, 3)
    cotangent = _data(x.shape, torch.float32, 4, std=1.0)
    got, got_grad = _value_and_grad(gelu_tanh, x, cotangent)
    torch_out, torch_grad = _value_and_grad(lambda t: torch.nn.functional.gelu(t, approximate="tanh"), x, cotangent)
    exact, exact_grad = _value_and_grad(gelu_tanh_reference, x.double(), cotangent.double())
    for value, truth, theirs in ((got, exact, torch_out), (got_grad, exact_grad, torch_grad)):
        ulp = truth.detach().abs().clamp_min(1.0) * FLOAT32_EPS
        assert float(((value.double() - truth).abs() / ulp).max()) <= 4.0
        assert float(((value.double() - theirs.double()).abs() / ulp).max()) <= 40.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_saturation_and_infinities(dtype):
    """Large |x| saturate without NaN: x (or -0) and slope 1 (or 0) as torch's float64 gelu gives;
    +-inf give the limits (torch's gelu gives NaN at -inf)."""
    big = 6e4 if dtype == torch.float16 else 1e4
    x = torch.tensor([big, -big, 20.0, -20.0, 9.99, -9.99, 10.01, -10.01, float("inf"), -float("inf"),
                      float("nan")], dtype=dtype)
    got, got_grad = _value_and_grad(gelu_tanh, x, torch.ones_like(x))
    finite = slice(0, 8)
    want, want_grad = _exact_value_and_grad(x[finite], torch.ones_like(x[finite]))
    torch.testing.assert_close(got[finite], want, **ONE_STEP[dtype])
    torch.testing.assert_close(got_grad[finite], want_grad, **ONE_STEP[dtype])
    assert got[8] == float("inf") and got[9] == 0 and torch.signbit(got[9])
    assert got_grad[8] == 1 and got_grad[9] == 0
    assert torch.isnan(got[10]) and torch.isnan(got_grad[10])


def test_non_contiguous_input():
    base = _data((6, 40, 9), torch.float32, 5)
    x = base.transpose(0, 2)[:, ::3]
    cotangent = _data(x.shape, torch.float32, 6, std=1.0)
    got, got_grad = _value_and_grad(gelu_tanh, x, cotangent)
    want, want_grad = _exact_value_and_grad(x, cotangent)
    assert got.is_contiguous() and got.shape == x.shape
    torch.testing.assert_close(got, want, **ONE_STEP[torch.float32])
    torch.testing.assert_close(got_grad, want_grad, **ONE_STEP[torch.float32])


_EVERY_BUILD_SCRIPT = textwrap.dedent("""
    import torch, imm_ext
    x64 = 3 * torch.randn(4, 1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for dtype, tolerance in ((torch.float32, 1e-6), (torch.bfloat16, 8e-3)):
        x = x64.to(dtype).requires_grad_()
        y = imm_ext.ops.gelu_tanh(x)
        (grad,) = torch.autograd.grad(y.sum(), x)
        exact = x.detach().double().requires_grad_()
        reference = imm_ext.ops.gelu_tanh_reference(exact)
        (reference_grad,) = torch.autograd.grad(reference.sum(), exact)
        torch.testing.assert_close(y.detach().double(), reference.detach(), rtol=tolerance, atol=tolerance)
        torch.testing.assert_close(grad.double(), reference_grad, rtol=tolerance, atol=tolerance)
    print(imm_ext.build_info()["cpu_isa"])
""")


@pytest.mark.skipif(imm_ext.build_info()["cpu_isa"] == "baseline", reason="only the baseline build runs here")
def test_every_instruction_set_build():
    """The narrower per-ISA builds, each in its own process (the build is chosen once per process),
    run side by side."""
    runs = {isa: subprocess.Popen([sys.executable, "-c", _EVERY_BUILD_SCRIPT], env=dict(os.environ, IMM_EXT_CPU_ISA=isa),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for isa in ("avx2", "baseline")}
    for isa, run in runs.items():
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err[-3000:]
        assert out.split()[-1] == isa


def test_fallback_path_matches_kernels(monkeypatch):
    """Where no kernel applies the PyTorch formulas run: the same values, saturation included."""
    x = torch.cat([_data((500,), torch.float32, 12), torch.tensor([1e4, -1e4, float("inf"), -float("inf")])])
    cotangent = torch.ones_like(x)
    kernel = _value_and_grad(gelu_tanh, x, cotangent)
    monkeypatch.setattr(activation_ops, "has_kernel", lambda t: False)
    fallback = _value_and_grad(gelu_tanh, x, cotangent)
    torch.testing.assert_close(fallback[0], kernel[0], rtol=4 * FLOAT32_EPS, atol=4 * FLOAT32_EPS)
    torch.testing.assert_close(fallback[1], kernel[1], rtol=4 * FLOAT32_EPS, atol=4 * FLOAT32_EPS)


@pytest.mark.parametrize("bad,error,match", [
    (torch.arange(6), TypeError, "x must be float32"),
    (torch.ones(3, dtype=torch.complex64), TypeError, "x must be float32"),
    ([1.0, 2.0], TypeError, "x must be a torch.Tensor"),
])
def test_bad_input(bad, error, match):
    with pytest.raises(error, match=match):
        gelu_tanh(bad)
