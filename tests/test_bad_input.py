"""Bad input raises a clear ValueError/TypeError naming the argument, before any kernel runs."""
import pytest
import torch

import imm_ext
from imm_ext.ops import mmd_loss_reference

from conftest import random_sets

X, Y = random_sets(2, 4, 5, 3, dtype=torch.float32)


@pytest.mark.parametrize("fn", [imm_ext.mmd_loss, mmd_loss_reference])
@pytest.mark.parametrize("x,y,kwargs,error,match", [
    (X, Y[..., :2], {}, ValueError, "dimension D"),
    (X, Y[0], {}, ValueError, "both be 2-D or both 3-D"),
    (X[None], Y[None], {}, ValueError, r"x must have shape"),
    (X[0, 0], Y[0, 0], {}, ValueError, r"x must have shape"),
    (X, Y[:1], {}, ValueError, "number of sets G"),
    (X.int(), Y, {}, TypeError, "x must be float32"),
    (X, Y.to(torch.complex64), {}, TypeError, "y must be float32"),
    (X.numpy(), Y, {}, TypeError, "x must be a torch.Tensor"),
    (X, Y, {"bandwidth": -1.0}, ValueError, "bandwidth must be positive"),
    (X, Y, {"bandwidth": float("nan")}, ValueError, "bandwidth must be positive"),
    (X, Y, {"bandwidth": float("inf")}, ValueError, "bandwidth must be positive"),
    (X, Y, {"bandwidth": torch.tensor([1.0, 0.0])}, ValueError, "bandwidth must be positive"),
    (X, Y, {"bandwidth": torch.tensor([1.0, 2.0, 3.0])}, ValueError, "G = 2"),
    (X, Y, {"bandwidth": torch.ones(2, 1, 1)}, ValueError, "bandwidth tensor must have shape"),
    (X, Y, {"bandwidth": []}, TypeError, "bandwidth must be a float"),
    (X, Y, {"bandwidth": "wide"}, TypeError, "bandwidth must be a float"),
    (X, Y, {"bandwidth": [1.0] * 17}, ValueError, "between 1 and 16"),
    (X, Y, {"bandwidth": torch.ones(2, requires_grad=True)}, ValueError, "must not require grad"),
    (X, Y, {"kernel": "rbf"}, ValueError, "kernel must be one of"),
    (X, Y, {"estimator": "u"}, ValueError, "estimator must be one of"),
    (X, Y, {"reduction": "avg"}, ValueError, "reduction must be one of"),
    (X, Y, {"distance_scale": "sqrt"}, ValueError, "distance_scale"),
    (X, Y, {"distance_scale": -2.0}, ValueError, "distance_scale"),
    (X, Y, {"eps": -1.0}, ValueError, "eps must be"),
    (X, Y, {"eps": float("nan")}, ValueError, "eps must be"),
    (X[:, :1], Y, {"estimator": "unbiased"}, ValueError, "at least 2 points"),
    (X[:, :0], Y, {}, ValueError, "N >= 1"),
    (X, Y[:, :0], {}, ValueError, "M >= 1"),
    (X[..., :0], Y[..., :0], {}, ValueError, "D >= 1"),
    (X[:0], Y[:0], {}, ValueError, "G >= 1"),
])
def test_bad_input(fn, x, y, kwargs, error, match):
    with pytest.raises(error, match=match):
        fn(x, y, **kwargs)


def test_mixed_devices():
    meta = torch.empty(2, 5, 3, device="meta")
    with pytest.raises(ValueError, match="same device"):
        imm_ext.mmd_loss(X, meta)


def test_pairwise_kernel_requires_a_known_kernel():
    with pytest.raises(ValueError, match="kernel must be one of"):
        imm_ext.pairwise_kernel(X, Y, kernel="cosine")


def test_module_checks_options_at_construction():
    with pytest.raises(ValueError, match="reduction"):
        imm_ext.MMDLoss(reduction="max")
    loss = imm_ext.MMDLoss(kernel="gaussian", bandwidth=2.0)
    assert "gaussian" in repr(loss)
    torch.testing.assert_close(loss(X, Y), imm_ext.mmd_loss(X, Y, kernel="gaussian", bandwidth=2.0))
