"""imm_ext.ops.attention: values and gradients against attention_reference (random shapes, strided
views, every dtype), the op contract (gradcheck, opcheck, torch.compile), the inference path, the
output layout, numerical edge cases, memory without a T x T matrix, and bad input."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, strategies as st

import imm_ext
from imm_ext.ops import attention, attention_ops, attention_reference

from conftest import TOLERANCE
from test_memory import peak_growth

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
HEAD_DIMS = [1, 8, 64, 72, 80, 128]


def _heads(b, h, t, d, dtype=torch.float64, seed=0, spread=1.0):
    gen = torch.Generator().manual_seed(seed)
    return (spread * torch.randn(b, h, t, d, generator=gen, dtype=torch.float64)).to(dtype)


def _qkv(b, h, tq, tk, d, dtype=torch.float64, seed=0):
    return _heads(b, h, tq, d, dtype, seed), _heads(b, h, tk, d, dtype, seed + 1), _heads(b, h, tk, d, dtype, seed + 2)


def _values_and_grads(fn, q, k, v, grad_out, **kwargs):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v, **kwargs)
    return (out, *torch.autograd.grad(out, (q, k, v), grad_out.to(out.dtype)))


def _assert_matches_float64_reference(got, q, k, v, grad_out, **kwargs):
    """got = (out, grad_q, grad_k, grad_v) of inputs in one dtype, against the float64 reference on
    the same (already rounded) inputs. 16-bit results are rounded once at the end, and the backward
    reads the rounded output (D = rowsum(dO * O), as FlashAttention does): a tolerance relative to
    each tensor's largest entry."""
    dtype = q.dtype
    want = [t.detach() for t in _values_and_grads(attention_reference, q.double(), k.double(), v.double(),
                                                  grad_out.double(), **kwargs)]
    for name, a, b in zip(("out", "grad_q", "grad_k", "grad_v"), got, want):
        assert a.dtype == dtype and a.shape == b.shape, name
        if dtype in (torch.float64, torch.float32):
            torch.testing.assert_close(a.double(), b, **TOLERANCE[dtype], msg=name)
        else:
            scale = float(b.abs().max()) + 1e-3
            relative = 2e-2 if dtype == torch.bfloat16 else 4e-3
            torch.testing.assert_close(a.double(), b, rtol=relative, atol=relative * scale, msg=name)


# ---------------------------------------------------------------------------------------------
# Values and gradients

@pytest.mark.parametrize("dtype", DTYPES)
@given(b=st.integers(1, 2), h=st.integers(1, 3), tq=st.integers(1, 40), tk=st.integers(1, 40),
       d=st.sampled_from(HEAD_DIMS), seed=st.integers(0, 1000))
def test_matches_reference_random_shapes(dtype, b, h, tq, tk, d, seed):
    q, k, v = _qkv(b, h, tq, tk, d, dtype, seed)
    grad_out = _heads(b, h, tq, d, dtype, seed + 3)
    _assert_matches_float64_reference(_values_and_grads(attention, q, k, v, grad_out), q, k, v, grad_out)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("tq,tk,d", [(1, 1, 64), (257, 300, 72), (31, 600, 64), (600, 7, 128), (256, 256, 80)])
def test_matches_reference_long_sequences(dtype, tq, tk, d):
    """Several key blocks per query (online-softmax rescaling) and several query blocks per head."""
    q, k, v = _qkv(1, 2, tq, tk, d, dtype, seed=tk)
    grad_out = _heads(1, 2, tq, d, dtype, seed=7)
    _assert_matches_float64_reference(_values_and_grads(attention, q, k, v, grad_out), q, k, v, grad_out)


def test_later_key_blocks_with_larger_scores_rescale_earlier_ones():
    """Scores grow along the keys, so each key block raises the running max of every row."""
    q = torch.ones(1, 1, 3, 8, dtype=torch.float64)
    k = torch.linspace(0, 6, 700, dtype=torch.float64).reshape(1, 1, 700, 1).expand(1, 1, 700, 8).contiguous()
    v = _heads(1, 1, 700, 8, seed=1)
    grad_out = _heads(1, 1, 3, 8, seed=2)
    _assert_matches_float64_reference(_values_and_grads(attention, q, k, v, grad_out), q, k, v, grad_out)


@pytest.mark.parametrize("scale", [0.0, -0.7, 3.0])
def test_explicit_scale(scale):
    q, k, v = _qkv(2, 2, 9, 13, 8)
    grad_out = _heads(2, 2, 9, 8, seed=5)
    got = _values_and_grads(attention, q, k, v, grad_out, scale=scale)
    _assert_matches_float64_reference(got, q, k, v, grad_out, scale=scale)


def test_large_logits_are_stable():
    q, k, v = _qkv(1, 2, 20, 30, 16, seed=3)
    q = q * 60  # scores of several hundred: exp overflows without the max subtraction
    out = attention(q, k, v)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, attention_reference(q, k, v), **TOLERANCE[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strided_views_are_read_in_place(dtype):
    """q, k, v as views of a fused (B, T, 3, H, Dh) projection, and a non-unit last-dim stride."""
    b, t, h, d = 2, 19, 3, 72
    qkv = _heads(1, b, t, 3 * h * d, dtype, seed=11)[0].view(b, t, 3, h, d)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    v_every_other = _heads(b, h, t, 2 * d, dtype, seed=12)[..., ::2]
    grad_out = _heads(b, h, t, d, dtype, seed=13)
    for values in (v, v_every_other):
        got = _values_and_grads(attention, q, k, values, grad_out)
        _assert_matches_float64_reference(got, q, k, values, grad_out)


def test_mixed_dtypes_are_promoted():
    q, k, v = _qkv(1, 2, 5, 6, 8, torch.float32)
    out = attention(q.half(), k, v.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, attention_reference(q.half(), k, v.bfloat16()))


def test_nan_stays_in_its_head():
    q, k, v = _qkv(1, 2, 4, 5, 8)
    k[0, 1, 3, 2] = float("nan")
    out = attention(q, k, v)
    assert torch.isnan(out[0, 1]).all() and torch.isfinite(out[0, 0]).all()


# ---------------------------------------------------------------------------------------------
# Output layout, inference path

def test_results_are_laid_out_like_their_inputs():
    """Contiguous inputs give contiguous results; views of a fused (B, T, 3, H, Dh) projection give
    (B, T, H, Dh) results (the output projection reads out.transpose(1, 2) as a view)."""
    q, k, v = (t.requires_grad_() for t in _qkv(2, 3, 5, 5, 8, torch.float32))
    out = attention(q, k, v)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert out.is_contiguous() and all(g.is_contiguous() for g in grads)
    qkv = torch.randn(2, 5, 3, 3, 8, requires_grad=True)
    views = [qkv[:, :, i].transpose(1, 2) for i in range(3)]
    out = attention(*views)
    grads = torch.autograd.grad(out.sum(), views)
    assert out.shape == (2, 3, 5, 8) and out.transpose(1, 2).is_contiguous()
    assert all(g.transpose(1, 2).is_contiguous() for g in grads)


def test_inference_path_saves_nothing(monkeypatch):
    calls = []
    for name in ("_attention", "attention_inference"):  # the training route and the inference op
        op = getattr(attention_ops, name)
        monkeypatch.setattr(attention_ops, name, lambda *a, _op=op, _name=name: calls.append(_name) or _op(*a))
    q, k, v = _qkv(1, 2, 6, 6, 8, torch.float32)
    plain = attention(q, k, v)
    with torch.no_grad():
        no_grad = attention(q.requires_grad_(), k, v)
    training = attention(q, k, v)
    assert calls == ["attention_inference", "attention_inference", "_attention"]
    torch.testing.assert_close(plain, no_grad, rtol=0, atol=0)
    torch.testing.assert_close(training, plain, rtol=0, atol=0)


def test_only_needed_gradients_are_returned():
    q, k, v = _qkv(1, 1, 4, 4, 8)
    k.requires_grad_()
    attention(q, k, v).sum().backward()
    assert q.grad is None and v.grad is None and k.grad is not None


# ---------------------------------------------------------------------------------------------
# The op contract

@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck(dtype):
    q, k, v = _qkv(2, 2, 5, 7, 8, dtype)
    if dtype == torch.float32:
        q = _heads(2, 5, 2, 8, dtype).transpose(1, 2)  # strided: the fake must report the real strides
    torch.library.opcheck(attention_ops.attention_forward,
                          (q.clone().requires_grad_(), k.clone().requires_grad_(), v.clone().requires_grad_(), 0.4))
    torch.library.opcheck(attention_ops.attention_inference, (q, k, v, 0.4))
    out, lse = attention_ops.attention_forward(q, k, v, 0.4)
    torch.library.opcheck(attention_ops.attention_backward, (torch.randn_like(out), q, k, v, out, lse, 0.4))


def test_torch_compile_fullgraph_matches_eager():
    q, k, v = _qkv(2, 3, 17, 17, 72, torch.float32, seed=21)

    def block(a, b, c):
        out = attention(a, b, c)
        return (out.transpose(1, 2).reshape(2, 17, 3 * 72) ** 2).sum()

    compiled = torch.compile(block, fullgraph=True)
    eager_inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    compiled_inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    expected, got = block(*eager_inputs), compiled(*compiled_inputs)
    expected.backward()
    got.backward()
    torch.testing.assert_close(got, expected)
    for a, b in zip(compiled_inputs, eager_inputs):
        torch.testing.assert_close(a.grad, b.grad)
    with torch.no_grad():
        torch.testing.assert_close(compiled(q, k, v), expected)


_EVERY_BUILD_SCRIPT = textwrap.dedent("""
    import torch, imm_ext
    from imm_ext.ops import attention, attention_reference
    torch.manual_seed(0)
    for dtype in (torch.float64, torch.float32):
        for b, h, tq, tk, d in [(1, 2, 37, 300, 72), (2, 1, 5, 64, 128), (1, 1, 9, 3, 1)]:
            q, k, v = (torch.randn(b, h, t, d, dtype=dtype, requires_grad=True) for t in (tq, tk, tk))
            w = torch.randn(b, h, tq, d, dtype=dtype)
            got = [attention(q, k, v)]
            got += torch.autograd.grad((got[0] * w).sum(), (q, k, v))
            want = [attention_reference(q, k, v)]
            want += torch.autograd.grad((want[0] * w).sum(), (q, k, v))
            tolerance = dict(rtol=1e-9, atol=1e-11) if dtype == torch.float64 else dict(rtol=2e-4, atol=1e-5)
            for a, e in zip(got, want):
                torch.testing.assert_close(a, e, **tolerance)
    print(imm_ext.build_info()["cpu_isa"])
""")


@pytest.mark.skipif(imm_ext.build_info()["cpu_isa"] == "baseline", reason="only the baseline build runs here")
def test_every_instruction_set_build():
    """The narrower per-ISA builds (their register blocking differs), each in its own process (the
    build is chosen once per process), run side by side."""
    runs = {isa: subprocess.Popen([sys.executable, "-c", _EVERY_BUILD_SCRIPT], env=dict(os.environ, IMM_EXT_CPU_ISA=isa),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for isa in ("avx2", "baseline")}
    for isa, run in runs.items():
        out, err = run.communicate()
        assert run.returncode == 0, err[-3000:]
        assert out.split()[-1] == isa


def test_fallback_path_matches_kernels(monkeypatch):
    """Devices without a compiled kernel take the pure-PyTorch path inside the same ops."""
    q, k, v = _qkv(2, 2, 9, 11, 8, seed=31)
    grad_out = _heads(2, 2, 9, 8, seed=32)
    with_kernel = _values_and_grads(attention, q, k, v, grad_out)
    monkeypatch.setattr(attention_ops, "has_kernel", lambda t: False)
    monkeypatch.setattr(attention_ops, "_FALLBACK_SCORES", 2 * 2 * 11 * 4)  # several query chunks
    fallback = _values_and_grads(attention, q, k, v, grad_out)
    for a, b in zip(fallback, with_kernel):
        torch.testing.assert_close(a, b, **TOLERANCE[torch.float64])
        assert a.stride() == b.stride()


def test_no_sequence_by_sequence_matrix_in_memory():
    """T = 4096: one T x T float32 matrix would be 64 MB, the reference's backward keeps several."""
    q, k, v = (t.requires_grad_() for t in _qkv(1, 1, 4096, 4096, 64, torch.float32, seed=41))
    small = [t.detach()[:, :, :8].requires_grad_() for t in (q, k, v)]
    attention(*small).sum().backward()  # lazy imports and thread pools
    for t in (q, k, v):
        t.grad = torch.zeros_like(t)

    def run():
        attention(q, k, v).sum().backward()

    growth = peak_growth(run)
    assert growth < 24 * 2**20, f"peak RSS grew by {growth / 2**20:.1f} MB"
    assert all(torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0 for t in (q, k, v))


# ---------------------------------------------------------------------------------------------
# Bad input

Q, K, V = _qkv(2, 3, 4, 5, 8, torch.float32)


@pytest.mark.parametrize("args,kwargs,error,match", [
    ((Q.numpy(), K, V), {}, TypeError, "q must be a torch.Tensor"),
    ((Q, K.int(), V), {}, TypeError, "k must be float32"),
    ((Q, K, V.to(torch.complex64)), {}, TypeError, "v must be float32"),
    ((Q[0], K, V), {}, ValueError, r"q must have shape \(B, H, T, Dh\)"),
    ((Q, K[None], V), {}, ValueError, r"k must have shape \(B, H, T, Dh\)"),
    ((Q, K[:1], V[:1]), {}, ValueError, r"k must have shape \(B, H, Tk, Dh\)"),
    ((Q, K[:, :2], V[:, :2]), {}, ValueError, r"k must have shape \(B, H, Tk, Dh\)"),
    ((Q, K[..., :4], V[..., :4]), {}, ValueError, r"k must have shape \(B, H, Tk, Dh\)"),
    ((Q, K, V[:, :, :3]), {}, ValueError, "v must have the shape of k"),
    ((Q[:, :, :0], K, V), {}, ValueError, "q must have B, H, T, Dh >= 1"),
    ((Q, K[:, :, :0], V[:, :, :0]), {}, ValueError, "k must have B, H, T, Dh >= 1"),
    ((Q[..., :0], K[..., :0], V[..., :0]), {}, ValueError, "q must have B, H, T, Dh >= 1"),
    ((_heads(1, 1, 2, 129), _heads(1, 1, 2, 129), _heads(1, 1, 2, 129)), {}, ValueError, "Dh = 129"),
    ((Q, K, V), {"scale": float("nan")}, ValueError, "scale must be a finite"),
    ((Q, K, V), {"scale": float("inf")}, ValueError, "scale must be a finite"),
    ((Q, K, V), {"scale": True}, ValueError, "scale must be a finite"),
    ((Q, K, V), {"scale": "1/8"}, ValueError, "scale must be a finite"),
])
def test_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        attention(*args, **kwargs)


def test_mixed_devices():
    with pytest.raises(ValueError, match="k must be on the device of q"):
        attention(Q, torch.empty(K.shape, device="meta"), V)


def test_scale_is_keyword_only():
    with pytest.raises(TypeError):
        attention(Q, K, V, 0.5)
