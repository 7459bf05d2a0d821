"""Large sets run in O(N + M) memory: N = M = 50,000 points in 3-D, forward and backward, with a
peak resident-set growth of a few MB (the naive method builds 50,000^2 x 3 differences: ~30 GB)."""
import threading
import time

import pytest
import torch

import imm_ext

PAGE = 4096


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def peak_growth(fn) -> int:
    """Peak RSS growth (bytes) while fn runs, sampled every millisecond."""
    baseline = resident_bytes()
    peak = baseline
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, resident_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return max(peak, resident_bytes()) - baseline


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["laplace"])
def test_fifty_thousand_points_forward_and_backward(kernel):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50_000, 3, generator=gen, requires_grad=True)
    y = torch.randn(50_000, 3, generator=gen, requires_grad=True)
    small_x, small_y = x[:100].detach().requires_grad_(), y[:100].detach().requires_grad_()
    imm_ext.mmd_loss(small_x, small_y, kernel=kernel).backward()  # thread pools, lazy imports
    x.grad = torch.zeros_like(x)  # preallocate so that the gradients' own 1.2 MB is not counted
    y.grad = torch.zeros_like(y)

    def run():
        loss = imm_ext.mmd_loss(x, y, kernel=kernel, bandwidth=0.5)
        loss.backward()
        assert torch.isfinite(loss)

    growth = peak_growth(run)
    print(f"peak RSS growth {growth / 2**20:.1f} MB")
    assert growth < 16 * 2**20, f"peak RSS grew by {growth / 2**20:.1f} MB"
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0 and y.grad.abs().sum() > 0
