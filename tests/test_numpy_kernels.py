"""imm_ext.kernels: the same computations on numpy arrays (CuPy on GPUs), zero-copy via DLPack."""
import numpy as np
import pytest
import torch

import imm_ext
from imm_ext.ops import mmd_loss_reference


def test_mmd_and_grad_on_numpy_match_torch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 7))
    y = rng.standard_normal((3, 6, 7))
    value, grad_x, grad_y = imm_ext.kernels.mmd_and_grad(x, y, kernel="gaussian", bandwidth=1.5)
    assert isinstance(value, np.ndarray) and value.shape == (3,) and grad_x.shape == x.shape
    tx, ty = torch.from_numpy(x).requires_grad_(), torch.from_numpy(y).requires_grad_()
    expected = mmd_loss_reference(tx, ty, kernel="gaussian", bandwidth=1.5, reduction="none")
    np.testing.assert_allclose(value, expected.detach().numpy(), rtol=1e-10)
    ex, ey = torch.autograd.grad(expected.sum(), (tx, ty))
    np.testing.assert_allclose(grad_x, ex.numpy(), rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(grad_y, ey.numpy(), rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(imm_ext.kernels.mmd(x, y, kernel="gaussian", bandwidth=1.5), value)


def test_pairwise_kernel_on_numpy_float32():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 3)).astype(np.float32)
    y = rng.standard_normal((30, 3)).astype(np.float32)
    k = imm_ext.kernels.pairwise_kernel(x, y, kernel="laplace", bandwidth=2.0)
    assert k.dtype == np.float32 and k.shape == (40, 30)
    expected = np.exp(-np.linalg.norm(x[:, None] - y[None], axis=-1) / 2.0)
    np.testing.assert_allclose(k, expected, rtol=1e-5)


def test_numpy_entry_points_reject_tensors_and_reduction():
    x = np.zeros((2, 3))
    with pytest.raises(TypeError, match="numpy or CuPy"):
        imm_ext.kernels.mmd(torch.zeros(2, 3), x)
    with pytest.raises(TypeError, match="must be a numpy or CuPy array"):
        imm_ext.kernels.mmd([[0.0]], x)
    with pytest.raises(TypeError, match="reduction"):
        imm_ext.kernels.mmd(x, x, reduction="sum")
