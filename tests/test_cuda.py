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
