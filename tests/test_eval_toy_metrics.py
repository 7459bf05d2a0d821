"""toy_metrics: near the real-vs-real floor for real samples; worse for shifted, blurred and
mode-dropping samples, each caught by the metrics that should catch it."""
import pytest
import torch

from imm_ext.data import toy2d
from imm_ext.eval import toy_metrics

N = 2000


def sample(name, seed):
    return toy2d.sample(name, N, torch.Generator().manual_seed(seed))


def test_a_real_sample_scores_like_the_real_vs_real_floor():
    result = toy_metrics(sample("8gaussians", 7), "8gaussians")
    floor = result["real_vs_real"]
    assert set(result) == set(floor) | {"real_vs_real"}
    for key in ("energy", "mmd2"):
        assert abs(result[key]) < 3e-3 and abs(floor[key]) < 3e-3
    assert result["sliced_w2"] < 0.05 and result["modes_covered"] == 1.0 and result["in_modes"] > 0.97
    assert result["log_density"] == pytest.approx(floor["log_density"], abs=0.1)


@pytest.mark.parametrize("name", ["8gaussians", "checkerboard", "moons"])
def test_shift_and_blur_make_every_distance_worse(name):
    real = sample(name, 7)
    clean = toy_metrics(real, name, seed=1)
    blurred = toy_metrics(real + 0.1 * torch.randn(real.shape, generator=torch.Generator().manual_seed(2)), name, seed=1)
    shifted = toy_metrics(real + torch.tensor([0.15, 0.0]), name, seed=1)
    for corrupted in (blurred, shifted):
        for key in ("energy", "sliced_w2", "mmd2"):
            assert corrupted[key] > clean[key] + 1e-4
        if clean["in_modes"] is not None:
            assert corrupted["in_modes"] < clean["in_modes"] - 0.05
        if clean["log_density"] is not None:
            assert corrupted["log_density"] < clean["log_density"] - 0.5
    assert blurred["mmd2"] > 5 * max(clean["mmd2"], 1e-4)  # the small bandwidths see blur


def test_dropped_modes_show_in_coverage_and_distances_but_not_in_log_density():
    real = sample("8gaussians", 3)
    modes = toy2d.mode_index("8gaussians", real)
    half = real[(modes >= 0) & (modes < 4)]
    result = toy_metrics(half, "8gaussians")
    assert result["modes_covered"] == 0.5
    assert result["log_density"] > result["real_vs_real"]["log_density"]  # every point sits on a mode
    assert result["energy"] > 0.05 and result["sliced_w2"] > 0.2


def test_an_explicit_reference_is_used():
    reference = sample("moons", 11)
    assert toy_metrics(reference, "moons", reference=reference)["energy"] < 1e-9


def test_bad_arguments():
    with pytest.raises(ValueError, match="name"):
        toy_metrics(torch.zeros(10, 2), "ring")
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        toy_metrics(torch.zeros(10, 3), "moons")
    with pytest.raises(ValueError, match="NaN"):
        toy_metrics(torch.full((10, 2), float("nan")), "moons")
    with pytest.raises(ValueError, match="seed"):
        toy_metrics(torch.zeros(10, 2), "moons", seed=-2)
