"""The op contract of architecture.md: gradcheck in float64, torch.library.opcheck, torch.compile
with fullgraph=True, the kernel-less fallback path, and no gradient work for inputs without grad."""
import pytest
import torch

import imm_ext
from imm_ext.ops import mmd_loss_reference, pairwise_kernel_reference, pairwise_ops

from conftest import random_sets

KERNELS = ["laplace", "gaussian", "energy", "imq"]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("g,n,m,d", [(2, 3, 4, 5), (1, 40, 33, 2), (2, 4, 4, 70)])
def test_gradcheck_mmd(kernel, estimator, g, n, m, d):
    x, y = random_sets(g, n, m, d, seed=11)
    bandwidth = torch.tensor([0.8, 2.0], dtype=torch.float64)[:g] if g == 2 else 1.5
    fn = lambda a, b: imm_ext.mmd_loss(a, b, kernel=kernel, bandwidth=bandwidth, estimator=estimator,
                                       reduction="none")
    assert torch.autograd.gradcheck(fn, (x.requires_grad_(), y.requires_grad_()))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("g,n,m,d", [(2, 3, 4, 5), (1, 40, 20, 3)])
def test_gradcheck_pairwise_kernel(kernel, g, n, m, d):
    x, y = random_sets(g, n, m, d, seed=12)
    fn = lambda a, b: imm_ext.pairwise_kernel(a, b, kernel=kernel, bandwidth=[0.7, 3.0], distance_scale=0.5)
    assert torch.autograd.gradcheck(fn, (x.requires_grad_(), y.requires_grad_()))


def _op_samples(dtype):
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    for g, n, m, d in [(2, 3, 4, 5), (1, 40, 20, 3), (2, 4, 4, 70)]:
        x, y = random_sets(g, n, m, d, dtype=dtype, seed=13)
        h = torch.rand(g, 2, dtype=acc) + 0.5
        yield x, y, h


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_opcheck(dtype):
    for x, y, h in _op_samples(dtype):
        for kernel in ("laplace", "energy"):
            for op in (pairwise_ops.mmd_block_sums, pairwise_ops.pairwise_kernel_matrix):
                args = (x.clone().requires_grad_(), y.clone().requires_grad_(), h, kernel, 0.5, 1e-8)
                torch.library.opcheck(op, args)
            acc = h.dtype
            w0 = torch.randn(x.shape[0], x.shape[1], x.shape[1], dtype=acc)
            w1 = torch.randn(x.shape[0], 1, 1, dtype=acc).expand(x.shape[0], x.shape[1], y.shape[1])
            torch.library.opcheck(pairwise_ops.pair_gradient, (x, x, w0, y, w1, h, kernel, 0.5, 1e-8))
            torch.library.opcheck(pairwise_ops.pair_gradient, (x, y, w1, None, None, h, kernel, 0.5, 1e-8))


def test_torch_compile_fullgraph_matches_eager():
    x, y = random_sets(8, 4, 4, 48, dtype=torch.float32, seed=14)
    bandwidth = torch.rand(8) * 10 + 1

    def loss_fn(a, b, h):
        return imm_ext.mmd_loss(a, b, bandwidth=h, distance_scale="dim") + imm_ext.pairwise_kernel(
            a, b, kernel="gaussian", bandwidth=h).mean()

    compiled = torch.compile(loss_fn, fullgraph=True)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    eager, got = loss_fn(xe, y, bandwidth), compiled(xc, y, bandwidth)
    torch.testing.assert_close(got, eager)
    eager.backward()
    got.backward()
    torch.testing.assert_close(xc.grad, xe.grad)


@pytest.mark.parametrize("kernel", KERNELS)
def test_fallback_path_matches_kernels(kernel, monkeypatch):
    """Devices without a compiled kernel take the pure-PyTorch path inside the same ops."""
    x, y = random_sets(3, 5, 6, 7, seed=15)
    options = dict(kernel=kernel, bandwidth=[0.5, 2.0], estimator="unbiased", reduction="none")
    xk, yk = x.clone().requires_grad_(), y.clone().requires_grad_()
    with_kernel = imm_ext.mmd_loss(xk, yk, **options)
    with_kernel.sum().backward()
    monkeypatch.setattr(pairwise_ops, "has_kernel", lambda t: False)
    xf, yf = x.clone().requires_grad_(), y.clone().requires_grad_()
    fallback = imm_ext.mmd_loss(xf, yf, **options)
    fallback.sum().backward()
    torch.testing.assert_close(fallback, with_kernel)
    torch.testing.assert_close(xf.grad, xk.grad)
    torch.testing.assert_close(yf.grad, yk.grad)
    k = imm_ext.pairwise_kernel(x.requires_grad_(), y, kernel=kernel)
    (gx,) = torch.autograd.grad(k.sum(), x)
    (gx_ref,) = torch.autograd.grad(pairwise_kernel_reference(x, y, kernel=kernel).sum(), x)
    torch.testing.assert_close(gx, gx_ref)


def test_no_gradient_work_for_stop_gradient_target(monkeypatch):
    calls = []
    original = pairwise_ops.pair_gradient
    monkeypatch.setattr(pairwise_ops, "pair_gradient",
                        lambda rows, *a, **k: calls.append(rows) or original(rows, *a, **k))
    x, y = random_sets(4, 4, 4, 30, seed=16)
    x.requires_grad_()
    imm_ext.mmd_loss(x, y).backward()
    assert len(calls) == 1 and calls[0] is x or torch.equal(calls[0], x)
    assert y.grad is None


def test_gradient_is_zero_at_coincident_points_and_finite():
    x = torch.zeros(1, 3, 4, dtype=torch.float64, requires_grad=True)  # all pairs at distance 0
    for kernel in KERNELS:
        loss = imm_ext.mmd_loss(x, x.detach(), kernel=kernel)
        (grad,) = torch.autograd.grad(loss, x)
        assert torch.isfinite(loss) and torch.equal(grad, torch.zeros_like(grad))


def test_nan_input_propagates_to_loss_and_gradient():
    x, y = random_sets(2, 4, 4, 5, seed=17)
    x[0, 1, 2] = float("nan")
    x.requires_grad_()
    loss = imm_ext.mmd_loss(x, y, reduction="none")
    (grad,) = torch.autograd.grad(loss.sum(), x)
    assert torch.isnan(loss[0]) and torch.isfinite(loss[1])
    assert torch.isnan(grad[0]).any() and torch.isfinite(grad[1]).all()
    expected = mmd_loss_reference(x.detach(), y, reduction="none")
    assert torch.isnan(expected[0])
