"""The 2-D MLP: interface, zero output at initialisation, determinism, gradients, labels, and the
sinusoidal time embedding in float64 arguments."""
import pytest
import torch

from imm_ext.models import MLP, timestep_embedding


def inputs(batch=5, dim=2):
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(batch, dim, generator=gen), 1000 * torch.rand(batch, generator=gen, dtype=torch.float64),
            1000 * torch.rand(batch, generator=gen, dtype=torch.float64))


def test_shapes_zero_init_and_repr():
    model = MLP(dim=3, width=32, depth=2)
    x, c_t, c_s = inputs(dim=3)
    out = model(x, c_t, c_s)
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(out))
    assert f"parameters={sum(p.numel() for p in model.parameters()):,}" in repr(model)


def test_seeded_init_is_deterministic_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = MLP(seed=1), MLP(seed=1), MLP(seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.input.weight, c.input.weight)


def test_gradients_reach_every_parameter_and_times_matter():
    model = MLP(width=32, depth=2, num_classes=3)
    torch.nn.init.normal_(model.output[-1].weight)  # leave the zero init so all paths carry gradient
    x, c_t, c_s = inputs()
    labels = torch.tensor([0, 1, 2, 3, 0])  # 3 is the null class
    model(x, c_t, c_s, labels).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with torch.no_grad():
        assert not torch.allclose(model(x, c_t, c_s, labels), model(x, c_t + 1, c_s, labels))
        assert not torch.allclose(model(x, c_t, c_s, labels), model(x, c_t, c_s + 1, labels))


def test_bf16_autocast_runs():
    model = MLP(width=32, depth=1)
    x, c_t, c_s = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x, c_t, c_s).shape == x.shape


def test_bad_input():
    with pytest.raises(ValueError, match="width"):
        MLP(width=0)
    model = MLP(num_classes=2)
    x, c_t, c_s = inputs()
    with pytest.raises(ValueError, match="labels"):
        model(x, c_t, c_s)
    with pytest.raises(ValueError, match=r"x must have shape"):
        model(x[:, :1], c_t, c_s)


def test_timestep_embedding_resolves_nearby_times():
    c = torch.tensor([994.0, 994.0 + 1e-4], dtype=torch.float64)  # t - r ~ 1e-7 near T, times 1000
    embedding = timestep_embedding(c, 256, dtype=torch.float64)
    assert embedding.shape == (2, 256) and not torch.equal(embedding[0], embedding[1])
    expected = torch.cat([torch.cos(c[:, None] * torch.tensor([1.0])), torch.sin(c[:, None] * torch.tensor([1.0]))], 1)
    torch.testing.assert_close(embedding[:, [0, 128]], expected.double())
    assert timestep_embedding(c, 5).shape == (2, 5)
    with pytest.raises(ValueError, match="c must have shape"):
        timestep_embedding(c[None], 8)
