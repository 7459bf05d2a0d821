"""imm_ext.ops.qk_norm: values and gradients against the reference (random shapes, every dtype), torch's
own rms_norm on the strided views it replaces, rows whose squares overflow, the kernel-less path,
determinism, every CPU instruction-set build, bad input, and the CUDA kernels (emulated, and on a GPU
where there is one) against the CPU ones on many shapes. The generic contract (both routes, gradcheck,
opcheck, compile) is tests/test_fused_op_contract.py's."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, strategies as st

import imm_ext
from imm_ext.ops import qk_norm, qk_norm_ops, qk_norm_reference

from conftest import TOLERANCE, value_and_grads_on

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
# The kernel and the float64 reference rounded to the dtype may be one step of the dtype apart.
ONE_STEP = {**TOLERANCE, torch.bfloat16: dict(rtol=8e-3, atol=1e-3), torch.float16: dict(rtol=2e-3, atol=1e-3)}


def _inputs(batch, tokens, heads, dim, dtype=torch.float64, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)
    qkv = scale * make(batch, tokens, 3 * heads * dim)
    weights = 1 + 0.3 * make(2, dim)
    cotangents = make(2, batch, heads, tokens, dim)
    return qkv.to(dtype), weights[0].to(dtype), weights[1].to(dtype), (cotangents[0].to(dtype), cotangents[1].to(dtype))


def _fused(heads):
    return lambda qkv, qw, kw: qk_norm(qkv, qw, kw, heads)


def _exact(qkv, qw, kw, cotangents, heads):
    """The reference in float64, values and gradients rounded to the inputs' dtype."""
    wide = value_and_grads_on("cpu", lambda a, b, c: qk_norm_reference(a, b, c, heads), (qkv.double(), qw.double(),
                              kw.double()), tuple(c.double() for c in cotangents))
    return [t.to(qkv.dtype) for t in wide]


@pytest.mark.parametrize("dtype", DTYPES)
@given(batch=st.integers(0, 3), tokens=st.integers(1, 70), heads=st.integers(1, 4), dim=st.integers(1, 40),
       seed=st.integers(0, 100))
def test_matches_reference(dtype, batch, tokens, heads, dim, seed):
    qkv, qw, kw, cotangents = _inputs(batch, tokens, heads, dim, dtype, seed)
    got = value_and_grads_on("cpu", _fused(heads), (qkv, qw, kw), cotangents)
    want = _exact(qkv, qw, kw, cotangents, heads)
    assert got[0].shape == (batch, heads, tokens, dim) and got[0].is_contiguous() and got[0].dtype == dtype
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **ONE_STEP[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [64, 128])
def test_the_unrolled_head_widths_match_the_reference(dtype, dim):
    """The common head widths take the kernels' compile-time-width loops (every dtype, forward and
    backward, a token count that is no multiple of the threads)."""
    qkv, qw, kw, cotangents = _inputs(3, 7, 2, dim, dtype, 4)
    got = value_and_grads_on("cpu", _fused(2), (qkv, qw, kw), cotangents)
    for a, b in zip(got, _exact(qkv, qw, kw, cotangents, 2)):
        torch.testing.assert_close(a, b, **ONE_STEP[dtype])


def test_matches_torch_rms_norm_on_the_strided_views():
    """What the DiT did before the fused op: torch's rms_norm on q and k split from the projection."""
    qkv, qw, kw, cotangents = _inputs(2, 33, 6, 64, torch.float32, 1)

    def stock(qkv, qw, kw):
        q, k, _ = qkv.view(2, 33, 3, 6, 64).permute(2, 0, 3, 1, 4).unbind(0)
        return (torch.nn.functional.rms_norm(q, (64,), qw, 1e-6), torch.nn.functional.rms_norm(k, (64,), kw, 1e-6))

    for a, b in zip(value_and_grads_on("cpu", _fused(6), (qkv, qw, kw), cotangents),
                    value_and_grads_on("cpu", stock, (qkv, qw, kw), cotangents)):
        torch.testing.assert_close(a, b, **TOLERANCE[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim", [16, 64])
def test_rows_whose_squares_overflow_stay_finite(dtype, dim):
    """Rows near the top of the float range: a finite rstd from the scaled row, as for the block's norms."""
    qkv, qw, kw, cotangents = _inputs(2, 5, 2, dim, torch.float64, 2)
    qkv[0, :2] *= 1e37
    got = value_and_grads_on("cpu", _fused(2), (qkv.to(dtype), qw.to(dtype), kw.to(dtype)),
                             tuple(c.to(dtype) for c in cotangents))
    want = _exact(qkv.to(dtype), qw.to(dtype), kw.to(dtype), tuple(c.to(dtype) for c in cotangents), 2)
    assert all(bool(torch.isfinite(t).all()) for t in got)
    torch.testing.assert_close(got[0], want[0], **ONE_STEP[dtype])


def test_a_non_finite_row_carries_nan_and_leaves_the_others_alone():
    """inf or NaN in a row gives NaN in that row's output (as torch's rms_norm), never a quiet zero
    row, so a non-finite guard downstream sees it."""
    qkv, qw, kw, _ = _inputs(1, 3, 1, 8, torch.float32, 3)
    qkv[0, 1, 0] = float("inf")
    qkv[0, 2, 8] = float("nan")
    q, k = qk_norm(qkv, qw, kw, 1)
    assert torch.isnan(q[0, 0, 1]).any() and torch.isnan(k[0, 0, 2]).all()
    assert torch.isfinite(q[0, 0, 0]).all() and torch.isfinite(k[0, 0, :2]).all() and torch.isfinite(q[0, 0, 2]).all()


def test_kernel_less_path_matches_kernels(monkeypatch):
    qkv, qw, kw, cotangents = _inputs(3, 10, 2, 24, torch.float32, 7)
    kernel = value_and_grads_on("cpu", _fused(2), (qkv, qw, kw), cotangents)
    monkeypatch.setattr(qk_norm_ops, "has_kernel", lambda t: False)
    for a, b in zip(value_and_grads_on("cpu", _fused(2), (qkv, qw, kw), cotangents), kernel):
        torch.testing.assert_close(a, b, **TOLERANCE[torch.float32])


def test_weight_gradients_do_not_depend_on_the_thread_count():
    qkv, qw, kw, cotangents = _inputs(4, 200, 6, 64, torch.float32, 8)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = value_and_grads_on("cpu", _fused(6), (qkv, qw, kw), cotangents)
        torch.set_num_threads(2)
        two = value_and_grads_on("cpu", _fused(6), (qkv, qw, kw), cotangents)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


_EVERY_BUILD_SCRIPT = textwrap.dedent("""
    import torch, imm_ext
    gen = torch.Generator().manual_seed(0)
    qkv64, w64 = torch.randn(3, 37, 3 * 5 * 24, generator=gen, dtype=torch.float64), torch.randn(2, 24, generator=gen, dtype=torch.float64)
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
        inputs = [t.to(dtype).requires_grad_() for t in (qkv64, w64[0], w64[1])]
        exact = [t.detach().to(dtype).double().requires_grad_() for t in (qkv64, w64[0], w64[1])]
        got = imm_ext.ops.qk_norm(*inputs, 5)
        want = imm_ext.ops.qk_norm_reference(*exact, 5)
        grads = torch.autograd.grad(sum(o.float().sum() for o in got), inputs)
        want_grads = torch.autograd.grad(sum(o.sum() for o in want), exact)
        for a, b in zip((*got, *grads), (*want, *want_grads)):
            torch.testing.assert_close(a.detach().double(), b.detach(), rtol=tolerance, atol=tolerance)
    print(imm_ext.build_info()["cpu_isa"])
""")


@pytest.mark.skipif(imm_ext.build_info()["cpu_isa"] == "baseline", reason="only the baseline build runs here")
def test_every_instruction_set_build():
    """The narrower per-ISA builds, each in its own process (the build is chosen once per process)."""
    for isa in ("avx2", "baseline"):
        run = subprocess.run([sys.executable, "-c", _EVERY_BUILD_SCRIPT], env=dict(os.environ, IMM_EXT_CPU_ISA=isa),
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-3000:]
        assert run.stdout.split()[-1] == isa


@pytest.mark.parametrize("call,error,match", [
    (lambda q, w: qk_norm([1.0], w, w, 2), TypeError, "qkv must be a torch.Tensor"),
    (lambda q, w: qk_norm(q.long(), w, w, 2), TypeError, "qkv must be float32"),
    (lambda q, w: qk_norm(q[0], w, w, 2), ValueError, "qkv must have shape"),
    (lambda q, w: qk_norm(q, w, w, 5), ValueError, "qkv must have shape"),
    (lambda q, w: qk_norm(q, w, w, 0), ValueError, "heads must be a positive int"),
    (lambda q, w: qk_norm(q, w[:3], w, 2), ValueError, "q_weight must have shape"),
    (lambda q, w: qk_norm(q, w, w.double(), 2), TypeError, "k_weight must .*dtype"),
    (lambda q, w: qk_norm(q, w, w, 2, eps=0.0), ValueError, "eps"),
    (lambda q, w: qk_norm(q, w, w, 2, eps=float("nan")), ValueError, "eps"),
])
def test_bad_input_is_named(call, error, match):
    qkv, qw, _, _ = _inputs(2, 3, 2, 4, torch.float32, 9)
    with pytest.raises(error, match=match):
        call(qkv, qw)


@pytest.mark.parametrize("args,error,match", [
    (lambda q, w: (q.long(), w, w, 2, 1e-6), TypeError, "qkv must be float32"),
    (lambda q, w: (q, w, w, 5, 1e-6), ValueError, "qkv must have shape"),
    (lambda q, w: (q, w, w, 0, 1e-6), ValueError, "heads must be a positive int"),
    (lambda q, w: (q, w.to("meta"), w, 2, 1e-6), ValueError, "q_weight must be on the device"),
    (lambda q, w: (q, w, w, 2, -1.0), ValueError, "eps"),
])
def test_the_registered_op_checks_its_arguments(args, error, match):
    qkv, qw, _, _ = _inputs(2, 3, 2, 4, torch.float32, 9)
    with pytest.raises(error, match=match):
        torch.ops.imm_ext.qk_norm(*args(qkv, qw))


# ---------------------------------------------------------------------------------------------
# CUDA (emulated, and the GPU where there is one) against the CPU

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 33, 6, 64), (3, 70, 2, 40), (1, 5, 3, 130), (2, 16, 4, 16)])
def test_cuda_matches_cpu(gpu, dtype, shape):
    batch, tokens, heads, dim = shape
    qkv, qw, kw, cotangents = _inputs(batch, tokens, heads, dim, dtype, 10)
    if dtype == torch.float32:
        qkv[0, 0] *= 1e37  # the overflowing rows' path too
    cpu = value_and_grads_on("cpu", _fused(heads), (qkv, qw, kw), cotangents)
    on_gpu = value_and_grads_on(gpu, _fused(heads), (qkv, qw, kw), cotangents)
    for a, b in zip(on_gpu, cpu):
        torch.testing.assert_close(a, b, **ONE_STEP[dtype])


def test_cuda_kernels_are_deterministic(gpu):
    qkv, qw, kw, cotangents = _inputs(2, 40, 4, 32, torch.float32, 11)
    first = value_and_grads_on(gpu, _fused(4), (qkv, qw, kw), cotangents)
    again = value_and_grads_on(gpu, _fused(4), (qkv, qw, kw), cotangents)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
