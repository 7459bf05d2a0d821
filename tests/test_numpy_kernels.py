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


# ---------------------------------------------------------------------------------------------
# Any numpy layout: views DLPack cannot share are copied; other inputs fail naming the argument.

def _layouts():
    rng = np.random.default_rng(2)
    base = rng.standard_normal((3, 6, 4))
    read_only = base.copy()
    read_only.flags.writeable = False
    return {
        "negative strides": base[::-1, ::-1],
        "negative last stride": base[..., ::-1],
        "zero strides": np.broadcast_to(base[:, :1], base.shape),
        "non-contiguous": base[:, ::2],
        "fortran order": np.asfortranarray(base),
        "big-endian": base.astype(">f8"),
        "read-only": read_only,
        "float16": base.astype(np.float16),
    }


@pytest.mark.parametrize("layout", list(_layouts()))
def test_any_numpy_layout_matches_its_contiguous_copy(layout):
    x = _layouts()[layout]
    y = np.random.default_rng(3).standard_normal((3, 5, 4))
    expected_x = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("="))
    value, grad_x, grad_y = imm_ext.kernels.mmd_and_grad(x, y, bandwidth=1.5)
    e_value, e_grad_x, e_grad_y = imm_ext.kernels.mmd_and_grad(expected_x, y, bandwidth=1.5)
    np.testing.assert_array_equal(value, e_value)
    np.testing.assert_array_equal(grad_x, e_grad_x)
    np.testing.assert_array_equal(grad_y, e_grad_y)
    np.testing.assert_array_equal(imm_ext.kernels.mmd(y, x), imm_ext.kernels.mmd(y, expected_x))
    np.testing.assert_array_equal(imm_ext.kernels.pairwise_kernel(x[0], y[0], kernel="gaussian"),
                                  imm_ext.kernels.pairwise_kernel(expected_x[0], y[0], kernel="gaussian"))


@pytest.mark.parametrize("bad,error,match", [
    (np.zeros((2, 3), dtype=np.int64), TypeError, "x must be a float16, float32 or float64 array"),
    (np.zeros((2, 3), dtype=bool), TypeError, "x must be a float16, float32 or float64 array"),
    (np.zeros((2, 3), dtype=object), TypeError, "x must be a float16, float32 or float64 array"),
    (np.zeros((2, 3), dtype=np.complex128), TypeError, "x must be a float16, float32 or float64 array"),
    (np.float64(1.0), TypeError, "x must be a numpy or CuPy array"),
    ("abc", TypeError, "x must be a numpy or CuPy array"),
    (None, TypeError, "x must be a numpy or CuPy array"),
    (np.zeros(()), ValueError, "x must have shape"),
    (np.zeros(3), ValueError, "x must have shape"),
    (np.zeros((1, 2, 3, 4)), ValueError, "x must have shape"),
    (np.zeros((0, 3)), ValueError, "x must hold at least one point"),
])
@pytest.mark.parametrize("entry", ["mmd", "mmd_and_grad", "pairwise_kernel"])
def test_bad_arrays_name_the_argument(entry, bad, error, match):
    fn = getattr(imm_ext.kernels, entry)
    good = np.zeros((2, 3))
    options = {"kernel": "laplace"} if entry == "pairwise_kernel" else {}
    with pytest.raises(error, match=match):
        fn(bad, good, **options)
    if error is TypeError:
        with pytest.raises(error, match=match.replace("x must", "y must")):
            fn(good, bad, **options)


def test_bad_options_name_the_option():
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="bandwidth"):
        imm_ext.kernels.mmd(x, x, bandwidth=-1.0)
    with pytest.raises(ValueError, match="bandwidth"):
        imm_ext.kernels.mmd(x, x, bandwidth=np.array([1.0, 2.0, 3.0]))
    with pytest.raises(TypeError, match="bandwidth must be a float16, float32 or float64"):
        imm_ext.kernels.mmd(x, x, bandwidth=np.array([1, 2]))
    with pytest.raises(TypeError, match="colour"):
        imm_ext.kernels.mmd(x, x, colour="red")


def test_numpy_bandwidth_array_is_a_per_set_bandwidth():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 5, 3))
    got = imm_ext.kernels.mmd(x, y, bandwidth=np.array([0.5, 2.0]))
    expected = [imm_ext.kernels.mmd(x[g], y[g], bandwidth=h) for g, h in enumerate((0.5, 2.0))]
    np.testing.assert_allclose(got, expected, rtol=1e-12)
