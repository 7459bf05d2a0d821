"""mmd_loss and pairwise_kernel agree with the pure-PyTorch reference: values and gradients, every
kernel, estimator, reduction and bandwidth form, on hypothesis-drawn shapes (including N = 1, D = 1,
odd sizes), both CPU layouts (narrow: small D, large sets; wide: large D, small sets)."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import imm_ext
from imm_ext.ops import mmd_loss_reference, pairwise_kernel_reference

from conftest import TOLERANCE, random_sets

KERNELS = ["laplace", "gaussian", "energy", "imq"]


def compare(fn, ref, x, y, tol, **options):
    x1, y1 = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    x2, y2 = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    out, expected = fn(x1, y1, **options), ref(x2, y2, **options)
    torch.testing.assert_close(out, expected, **tol)
    weight = torch.randn_like(out)
    grads = torch.autograd.grad((out * weight).sum(), (x1, y1))
    expected_grads = torch.autograd.grad((expected * weight).sum(), (x2, y2))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, **tol)


shapes = st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.integers(1, 9))


@given(shape=shapes, kernel=st.sampled_from(KERNELS), estimator=st.sampled_from(["biased", "unbiased"]),
       reduction=st.sampled_from(["mean", "sum", "none"]), seed=st.integers(0, 2**16))
def test_mmd_small_shapes(shape, kernel, estimator, reduction, seed):
    g, n, m, d = shape
    if estimator == "unbiased":
        n, m = max(n, 2), max(m, 2)
    x, y = random_sets(g, n, m, d, seed=seed)
    compare(imm_ext.mmd_loss, mmd_loss_reference, x, y, TOLERANCE[torch.float64], kernel=kernel,
            bandwidth=1.7, estimator=estimator, reduction=reduction)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("g,n,m,d", [(2, 70, 45, 3), (1, 33, 130, 17), (3, 64, 64, 64), (1, 20, 19, 1)])
def test_mmd_narrow_layout(kernel, g, n, m, d):
    x, y = random_sets(g, n, m, d, seed=n + m + d)
    compare(imm_ext.mmd_loss, mmd_loss_reference, x, y, TOLERANCE[torch.float64], kernel=kernel,
            bandwidth=[0.5, 2.0], reduction="none")


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("g,n,m,d", [(5, 4, 4, 300), (2, 3, 5, 257), (1, 1, 1, 65), (2, 20, 7, 80), (2, 70, 45, 96)])
def test_mmd_wide_layout_imm_style(kernel, g, n, m, d):
    x, y = random_sets(g, n, m, d, seed=d)
    bandwidth = torch.rand(g, dtype=torch.float64) * 50 + 1  # IMM: one bandwidth per group
    compare(imm_ext.mmd_loss, mmd_loss_reference, x, y, TOLERANCE[torch.float64], kernel=kernel,
            bandwidth=bandwidth, distance_scale="dim", reduction="none")


@pytest.mark.parametrize("bandwidth", [0.3, [0.1, 1.0, 10.0], "per-set", "per-set-multi", "scalar-tensor"])
def test_bandwidth_forms(bandwidth):
    x, y = random_sets(3, 6, 5, 4, seed=1)
    if bandwidth == "per-set":
        bandwidth = torch.tensor([0.5, 1.0, 4.0], dtype=torch.float64)
    elif bandwidth == "per-set-multi":
        bandwidth = torch.tensor([[0.5, 1.0], [1.0, 2.0], [4.0, 8.0]], dtype=torch.float64)
    elif bandwidth == "scalar-tensor":
        bandwidth = torch.tensor(0.7)
    for kernel in ("laplace", "gaussian", "imq"):
        compare(imm_ext.mmd_loss, mmd_loss_reference, x, y, TOLERANCE[torch.float64], kernel=kernel,
                bandwidth=bandwidth, reduction="none")


def test_multi_bandwidth_is_sum_of_kernels():
    x, y = random_sets(2, 5, 6, 3, seed=2)
    both = imm_ext.mmd_loss(x, y, bandwidth=[0.5, 3.0], reduction="none")
    separate = imm_ext.mmd_loss(x, y, bandwidth=0.5, reduction="none") + imm_ext.mmd_loss(
        x, y, bandwidth=3.0, reduction="none")
    torch.testing.assert_close(both, separate)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("g,n,m,d", [(4, 4, 4, 200), (1, 50, 40, 3)])
def test_low_precision_matches_float64_reference_on_same_values(dtype, g, n, m, d):
    x, y = random_sets(g, n, m, d, dtype=dtype, seed=3)
    x64, y64 = x.double().requires_grad_(), y.double().requires_grad_()
    xl, yl = x.clone().requires_grad_(), y.clone().requires_grad_()
    options = dict(kernel="laplace", bandwidth=2.0, distance_scale="dim", reduction="sum")
    out = imm_ext.mmd_loss(xl, yl, **options)
    expected = mmd_loss_reference(x64, y64, **options)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-6)
    out.backward()
    expected.backward()
    assert xl.grad.dtype == dtype and yl.grad.dtype == dtype
    # Gradients are accumulated in float32, then rounded once to the storage dtype.
    torch.testing.assert_close(xl.grad.double(), x64.grad.to(dtype).double(), **TOLERANCE[dtype])
    torch.testing.assert_close(yl.grad.double(), y64.grad.to(dtype).double(), **TOLERANCE[dtype])


@given(shape=shapes, kernel=st.sampled_from(KERNELS), seed=st.integers(0, 2**16))
def test_pairwise_kernel_small_shapes(shape, kernel, seed):
    g, n, m, d = shape
    x, y = random_sets(g, n, m, d, seed=seed)
    compare(imm_ext.pairwise_kernel, pairwise_kernel_reference, x, y, TOLERANCE[torch.float64],
            kernel=kernel, bandwidth=[0.8, 2.5], distance_scale=0.5)


@pytest.mark.parametrize("kernel", KERNELS)
def test_pairwise_kernel_narrow_layout_and_unbatched(kernel):
    x, y = random_sets(1, 150, 70, 5, seed=4, batched=False)
    compare(imm_ext.pairwise_kernel, pairwise_kernel_reference, x, y, TOLERANCE[torch.float64],
            kernel=kernel, bandwidth=1.1)
    assert imm_ext.pairwise_kernel(x, y, kernel=kernel).shape == (150, 70)


def test_non_contiguous_inputs():
    base_x, base_y = random_sets(3, 8, 12, 10, seed=5)
    x, y = base_x[:, :, ::2], base_y[:, ::2, 1::2]  # strided views
    assert not x.is_contiguous() and not y.is_contiguous()
    compare(imm_ext.mmd_loss, mmd_loss_reference, x, y, TOLERANCE[torch.float64], reduction="none")
    compare(imm_ext.pairwise_kernel, pairwise_kernel_reference, x, y, TOLERANCE[torch.float64],
            kernel="gaussian")


def test_unbatched_input_gives_scalar():
    x, y = random_sets(1, 7, 9, 3, seed=6, batched=False)
    assert imm_ext.mmd_loss(x, y, reduction="none").shape == ()
    torch.testing.assert_close(imm_ext.mmd_loss(x, y), mmd_loss_reference(x, y))


def test_mixed_dtypes_promote():
    x, y = random_sets(2, 5, 5, 3, seed=7)
    out = imm_ext.mmd_loss(x.float(), y)
    torch.testing.assert_close(out, mmd_loss_reference(x.float().double(), y))


def test_mmd_terms_combine_into_the_biased_mmd():
    x, y = random_sets(3, 5, 4, 6, seed=8)
    terms = imm_ext.mmd_terms(x, y, kernel="laplace", bandwidth=2.0)
    assert terms.shape == (3, 3)
    torch.testing.assert_close(terms[:, 0] + terms[:, 1] - 2 * terms[:, 2],
                               mmd_loss_reference(x, y, bandwidth=2.0, reduction="none"))
    k_xy = pairwise_kernel_reference(x, y, kernel="laplace", bandwidth=2.0)
    torch.testing.assert_close(terms[:, 2], k_xy.mean((1, 2)))
    assert imm_ext.mmd_terms(x[0], y[0]).shape == (3,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_the_backward_reads_the_distances_the_forward_kept(dtype):
    from imm_ext.ops import pairwise_ops

    x, y = random_sets(3, 4, 5, 300, seed=3, dtype=dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    h = torch.rand(3, 1, dtype=acc) + 0.5
    w0, w1 = torch.randn(3, 4, 4, dtype=acc), torch.randn(3, 4, 5, dtype=acc)
    _, kept = pairwise_ops.mmd_block_sums(x, y, h, "laplace", 1 / 300, 1e-8)
    torch.testing.assert_close(kept, torch.cdist(x.to(acc), torch.cat([x, y], 1).to(acc)).square(),
                               rtol=1e-4, atol=1e-3)
    with_kept = pairwise_ops.pair_gradient(x, x, w0, y, w1, h, "laplace", 1 / 300, 1e-8, distances=kept)
    assert torch.equal(with_kept, pairwise_ops.pair_gradient(x, x, w0, y, w1, h, "laplace", 1 / 300, 1e-8))
    # Where they would be large (many points) or the layout narrow (D <= 64), none are kept.
    assert pairwise_ops.mmd_block_sums(x[..., :64], y[..., :64], h, "laplace", 1.0, 1e-8)[1].numel() == 0
    many = random_sets(1, 40, 40, 300, seed=4, dtype=dtype)
    assert pairwise_ops.mmd_block_sums(*many, h[:1], "laplace", 1.0, 1e-8)[1].numel() == 0


@pytest.mark.parametrize("dtype,d", [(torch.float32, 2048), (torch.float64, 1024), (torch.float32, 2051)])
def test_a_gradient_too_large_for_the_caches_equals_the_one_computed_in_small_pieces(dtype, d):
    # From 32 MiB on, the wide layout writes the gradient with streamed stores (past the caches);
    # groups are independent, so the gradient of the summed loss over all groups must equal, bit for
    # bit, the gradients of eighths of them, each small enough for ordinary stores. D = 2051 leaves
    # the rows unaligned: ordinary stores at the large size.
    g = 1024
    x, y = random_sets(g, 4, 4, d, seed=d, dtype=dtype)
    bandwidth = torch.rand(g, dtype=dtype) * 50 + 1
    options = dict(kernel="laplace", distance_scale="dim", reduction="sum")
    whole = x.clone().requires_grad_()
    imm_ext.mmd_loss(whole, y, bandwidth=bandwidth, **options).backward()
    assert whole.grad.numel() * whole.grad.element_size() >= 32 << 20
    pieces = []
    for part in torch.arange(g).chunk(8):
        piece = x[part].clone().requires_grad_()
        imm_ext.mmd_loss(piece, y[part], bandwidth=bandwidth[part], **options).backward()
        pieces.append(piece.grad)
    assert torch.equal(whole.grad, torch.cat(pieces))


@pytest.mark.parametrize("d", [3, 300])
def test_a_set_against_itself_after_another_call(d):
    # y is x itself, so both of the block's sets are its own rows; a call on other points first leaves
    # its distances in the kernel's scratch, which must not leak into this one.
    other_x, other_y = random_sets(2, 4, 4, d, seed=1)
    imm_ext.mmd_loss(other_x, other_y + 3.0)
    x, _ = random_sets(2, 4, 4, d, seed=2)
    for kernel in KERNELS:
        value = imm_ext.mmd_loss(x, x, kernel=kernel, eps=0.0 if kernel == "energy" else 1e-8)
        torch.testing.assert_close(value, mmd_loss_reference(x, x, kernel=kernel), rtol=0, atol=1e-12)
