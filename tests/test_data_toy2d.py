"""The 2-D toys: overall std, exact densities that integrate to one and match the samples, modes."""
import math

import pytest
import torch

from imm_ext.data import toy2d


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", toy2d.NAMES)
def test_samples_are_centred_with_the_requested_overall_std(name):
    for std in (0.5, 2.0):
        x = toy2d.sample(name, 200_000, generator(), std=std, dtype=torch.float64)
        assert x.shape == (200_000, 2)
        assert x.mean(0).abs().max() < 0.02 * std
        assert x.var(0).mean().sqrt().item() == pytest.approx(std, rel=0.01)


def test_native_coordinates_follow_the_definitions():
    x = toy2d.sample("checkerboard", 50_000, generator(), std=None)
    assert x.abs().max() <= 4
    squares = (x + 4).div(2).floor().long()
    assert ((squares[:, 0] + squares[:, 1]) % 2 == 0).all()  # only the 8 data squares
    centres = toy2d.mode_centers("8gaussians", std=None)
    assert centres.norm(dim=1).sub(4 / math.sqrt(2)).abs().max() < 1e-12


@pytest.mark.parametrize("name", toy2d.EXACT_DENSITY)
def test_exact_densities_integrate_to_one_and_match_a_histogram(name):
    # Mixtures (std 0.5) lie well inside [-3, 3]^2; the checkerboard fills [-4, 4]^2 natively, and its
    # square edges fall on cell edges of this grid (cells divisible by 4), so the midpoint rule is exact.
    side = 4 * 0.5 / math.sqrt(16 / 3) if name == "checkerboard" else 3.0
    cells = 600
    grid = (torch.arange(cells, dtype=torch.float64) + 0.5) / cells * 2 * side - side
    points = torch.cartesian_prod(grid, grid)
    cell_area = (2 * side / cells) ** 2
    density = toy2d.log_density(name, points).exp()
    assert (density.sum() * cell_area).item() == pytest.approx(1.0, abs=2e-3)
    # The share of samples in the left half-plane-quadrant agrees with the integral of the density there.
    x = toy2d.sample(name, 100_000, generator(1), dtype=torch.float64)
    region = lambda p: (p[:, 0] < 0.1) & (p[:, 1] > -0.2)
    assert (region(x).double().mean().item()
            == pytest.approx((density * region(points)).sum().item() * cell_area, abs=0.01))


def test_log_density_ranks_data_above_off_mode_points():
    for name in ("8gaussians", "25gaussians"):
        x = toy2d.sample(name, 1000, generator())
        assert toy2d.log_density(name, x).mean() > toy2d.log_density(name, torch.zeros(1, 2) + 3.0).max()
    assert toy2d.log_density("checkerboard", torch.tensor([[0.5, 0.5]]) * 0.5 / math.sqrt(16 / 3)).isfinite().all()
    assert toy2d.log_density("checkerboard", torch.tensor([[-1.0, 1.0]]) * 0.5 / math.sqrt(16 / 3)).isneginf().all()


@pytest.mark.parametrize("name,modes", [("8gaussians", 8), ("25gaussians", 25), ("checkerboard", 8)])
def test_every_mode_gets_its_share(name, modes):
    centres = toy2d.mode_centers(name)
    assert centres.shape == (modes, 2)
    x = toy2d.sample(name, 20_000, generator())
    index = toy2d.mode_index(name, x)
    assert (index >= 0).double().mean() > 0.98
    counts = torch.bincount(index[index >= 0], minlength=modes).double()
    assert counts.min() > 0.8 * counts.mean()
    assert toy2d.mode_index(name, centres.float()).tolist() == list(range(modes))


def test_sampling_is_reproducible_and_seed_dependent():
    assert torch.equal(toy2d.sample("moons", 100, generator(3)), toy2d.sample("moons", 100, generator(3)))
    assert not torch.equal(toy2d.sample("moons", 100, generator(3)), toy2d.sample("moons", 100, generator(4)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="name"):
        toy2d.sample("spiral", 10)
    with pytest.raises(ValueError, match="n must"):
        toy2d.sample("moons", 0)
    with pytest.raises(ValueError, match="std"):
        toy2d.sample("moons", 10, std=-1.0)
    with pytest.raises(TypeError, match="generator"):
        toy2d.sample("moons", 10, 123)
    with pytest.raises(ValueError, match="no closed-form density"):
        toy2d.log_density("moons", torch.zeros(3, 2))
    with pytest.raises(ValueError, match="no separate modes"):
        toy2d.mode_index("circles", torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        toy2d.log_density("8gaussians", torch.zeros(3, 3))
    assert toy2d.mode_centers("swissroll") is None
