"""CUDA kernels against the CPU kernels and the reference (skipped without a GPU)."""
import pytest
import torch

import imm_ext
from imm_ext.ops import mmd_loss_reference, pairwise_kernel_reference

from conftest import TOLERANCE, random_sets

pytestmark = pytest.mark.cuda
KERNELS = ["laplace", "gaussian", "energy", "imq"]
SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (8, 4, 4, 3072), (3, 40, 33, 3), (1, 200, 150, 64),
          (2, 70, 50, 65), (1, 1000, 999, 2), (4, 17, 9, 130)]


def both_devices(x, y):
    return (x, y), (x.cuda(), y.cuda())


@pytest.fixture(autouse=True)
def needs_cuda_build():
    if not imm_ext.build_info()["cuda"]:
        pytest.fail("a GPU is present but imm_ext was built without CUDA kernels")


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_mmd_cuda_matches_cpu_float64(kernel, shape, estimator):
    g, n, m, d = shape
    if estimator == "unbiased":
        n, m = max(n, 2), max(m, 2)
    x, y = random_sets(g, n, m, d, seed=d)
    bandwidth = torch.rand(g, dtype=torch.float64) * 5 + 0.5
    results = []
    for xs, ys in both_devices(x, y):
        xs, ys = xs.clone().requires_grad_(), ys.clone().requires_grad_()
        loss = imm_ext.mmd_loss(xs, ys, kernel=kernel, bandwidth=bandwidth.to(xs.device), estimator=estimator,
                                distance_scale="dim", reduction="none")
        gx, gy = torch.autograd.grad(loss.sum(), (xs, ys))
        results.append([t.cpu() for t in (loss, gx, gy)])
    for cpu, gpu in zip(*results):
        torch.testing.assert_close(gpu, cpu, **TOLERANCE[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(64, 4, 4, 4096), (1, 500, 400, 3), (2, 50, 60, 72)])
def test_mmd_cuda_low_precision(dtype, shape):
    g, n, m, d = shape
    x, y = random_sets(g, n, m, d, dtype=dtype, seed=1)
    x, y = x.cuda().requires_grad_(), y.cuda()
    loss = imm_ext.mmd_loss(x, y, bandwidth=2.0, distance_scale="dim", reduction="sum")
    loss.backward()
    x64 = x.detach().double().requires_grad_()
    expected = mmd_loss_reference(x64, y.double(), bandwidth=2.0, distance_scale="dim", reduction="sum")
    expected.backward()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), x64.grad.to(dtype).double(), **TOLERANCE[dtype])


@pytest.mark.parametrize("kernel", KERNELS)
def test_pairwise_kernel_cuda(kernel):
    x, y = random_sets(2, 130, 70, 5, seed=3)
    x, y = x.cuda().requires_grad_(), y.cuda().requires_grad_()
    k = imm_ext.pairwise_kernel(x, y, kernel=kernel, bandwidth=[0.5, 2.0])
    expected = pairwise_kernel_reference(x, y, kernel=kernel, bandwidth=[0.5, 2.0])
    torch.testing.assert_close(k, expected, **TOLERANCE[torch.float64])
    weight = torch.randn_like(k)
    got = torch.autograd.grad((k * weight).sum(), (x, y))
    want = torch.autograd.grad((expected * weight).sum(), (x, y))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOLERANCE[torch.float64])


def test_cuda_opcheck_and_compile():
    from imm_ext.ops import pairwise_ops

    x, y = random_sets(2, 4, 4, 70, dtype=torch.float32, device="cuda")
    h = torch.rand(2, 1, device="cuda") + 0.5
    torch.library.opcheck(pairwise_ops.mmd_block_sums, (x.requires_grad_(), y, h, "laplace", 0.1, 1e-8))
    fn = torch.compile(lambda a, b: imm_ext.mmd_loss(a, b, bandwidth=h[:, 0]), fullgraph=True)
    torch.testing.assert_close(fn(x, y), imm_ext.mmd_loss(x, y, bandwidth=h[:, 0]))


def test_cuda_non_default_stream_and_device_guard():
    x, y = random_sets(4, 4, 4, 300, dtype=torch.float32, device="cuda")
    expected = imm_ext.mmd_loss(x, y)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = imm_ext.mmd_loss(x, y)
    stream.synchronize()
    torch.testing.assert_close(got, expected)


# ---------------------------------------------------------------------------------------------
# Fused attention

ATTENTION_SHAPES = [(1, 1, 1, 1, 1), (2, 3, 5, 7, 8), (2, 2, 33, 70, 72), (1, 2, 130, 257, 64),
                    (1, 1, 300, 50, 128), (2, 1, 17, 300, 80), (1, 2, 40, 40, 96), (1, 1, 65, 33, 33)]


def _attention_inputs(b, h, tq, tk, d, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    make = lambda t: torch.randn(b, h, t, d, generator=gen, dtype=torch.float64).to(dtype)
    return make(tq), make(tk), make(tk), make(tq)


def _attention_values_and_grads(q, k, v, grad_out, device):
    q, k, v = (t.to(device).requires_grad_() for t in (q, k, v))
    out = imm_ext.ops.attention(q, k, v)
    grads = torch.autograd.grad(out, (q, k, v), grad_out.to(device))
    return [t.detach().cpu() for t in (out, *grads)]


def _assert_attention_close(got, want):
    for a, b in zip(got, want):
        if a.dtype in (torch.float64, torch.float32):
            torch.testing.assert_close(a, b, **TOLERANCE[a.dtype])
        else:  # both sides round to 16 bits once: allow a rounding step relative to the largest entry
            relative = 2e-2 if a.dtype == torch.bfloat16 else 4e-3
            torch.testing.assert_close(a.double(), b.double(), rtol=relative,
                                       atol=relative * (float(b.abs().max()) + 1e-3))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", ATTENTION_SHAPES)
def test_attention_cuda_matches_cpu(dtype, shape):
    q, k, v, grad_out = _attention_inputs(*shape, dtype, seed=shape[3])
    _assert_attention_close(_attention_values_and_grads(q, k, v, grad_out, "cuda"),
                            _attention_values_and_grads(q, k, v, grad_out, "cpu"))


def test_attention_cuda_strided_views_inference_and_determinism():
    b, t, h, d = 2, 45, 3, 72
    qkv = torch.randn(b, t, 3, h, d, device="cuda")
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    grad_out = torch.randn(b, h, t, d)
    got = _attention_values_and_grads(q, k, v, grad_out, "cuda")
    _assert_attention_close(got, _attention_values_and_grads(q.cpu(), k.cpu(), v.cpu(), grad_out, "cpu"))
    again = _attention_values_and_grads(q, k, v, grad_out, "cuda")
    assert all(torch.equal(a, b) for a, b in zip(got, again)), "the backward must be deterministic"
    with torch.no_grad():
        torch.testing.assert_close(imm_ext.ops.attention(q, k, v).cpu(), got[0], rtol=0, atol=0)


def test_attention_cuda_opcheck_compile_and_stream():
    from imm_ext.ops import attention_ops

    q, k, v, _ = _attention_inputs(2, 2, 37, 41, 64, torch.float32)
    q, k, v = q.cuda(), k.cuda(), v.cuda()
    torch.library.opcheck(attention_ops.attention_forward,
                          (q.clone().requires_grad_(), k.clone().requires_grad_(), v.clone().requires_grad_(), 0.3))
    out, lse = attention_ops.attention_forward(q, k, v, 0.3)
    torch.library.opcheck(attention_ops.attention_backward, (torch.randn_like(out), q, k, v, out, lse, 0.3))
    fn = torch.compile(lambda a, b, c: imm_ext.ops.attention(a, b, c).square().sum(), fullgraph=True)
    torch.testing.assert_close(fn(q, k, v), imm_ext.ops.attention(q, k, v).square().sum())
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        on_stream = imm_ext.ops.attention(q, k, v)
    stream.synchronize()
    torch.testing.assert_close(on_stream, imm_ext.ops.attention(q, k, v), rtol=0, atol=0)
