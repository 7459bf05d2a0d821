"""Shared test settings: hypothesis profile, the `cuda` marker, and point-set helpers."""
import hypothesis
import pytest
import torch

hypothesis.settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                                     suppress_health_check=[hypothesis.HealthCheck.too_slow])
hypothesis.settings.load_profile("ci")

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)


# Tolerances per dtype for comparisons against the float64 reference computed on the same inputs.
TOLERANCE = {
    torch.float64: dict(rtol=1e-9, atol=1e-11),
    torch.float32: dict(rtol=2e-4, atol=1e-5),
    torch.bfloat16: dict(rtol=2e-3, atol=1e-4),
    torch.float16: dict(rtol=2e-3, atol=1e-4),
}


def random_sets(g, n, m, d, dtype=torch.float64, device="cpu", seed=0, batched=True, spread=1.0):
    gen = torch.Generator().manual_seed(seed)
    x = (spread * torch.randn(g, n, d, generator=gen, dtype=torch.float64)).to(device=device, dtype=dtype)
    y = (spread * torch.randn(g, m, d, generator=gen, dtype=torch.float64) + 0.3).to(device=device, dtype=dtype)
    return (x, y) if batched else (x[0], y[0])
