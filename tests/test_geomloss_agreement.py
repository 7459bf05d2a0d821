"""Agreement with GeomLoss's SamplesLoss, which returns half the (biased) squared MMD.

GeomLoss clamps squared distances at 1e-8 before its square root (in units of blur for the
Laplacian kernel), which is our eps = 1e-4 (times blur)."""
import pytest
import torch

import imm_ext

from conftest import random_sets

geomloss = pytest.importorskip("geomloss")


@pytest.mark.parametrize("ours,theirs,eps", [("laplace", "laplacian", 0.7e-4), ("gaussian", "gaussian", 1e-8),
                                             ("energy", "energy", 1e-4)])
@pytest.mark.parametrize("n,m,d", [(60, 45, 3), (30, 30, 10)])
def test_samples_loss(ours, theirs, eps, n, m, d):
    x, y = random_sets(1, n, m, d, seed=21, batched=False)
    blur = 0.7
    samples_loss = geomloss.SamplesLoss(loss=theirs, blur=blur, backend="tensorized")
    xa, ya = x.clone().requires_grad_(), y.clone().requires_grad_()
    xb, yb = x.clone().requires_grad_(), y.clone().requires_grad_()
    expected = 2 * samples_loss(xa, ya)
    got = imm_ext.mmd_loss(xb, yb, kernel=ours, bandwidth=blur, eps=eps)
    torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-12)
    expected.backward()
    got.backward()
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(yb.grad, ya.grad, rtol=1e-6, atol=1e-10)
