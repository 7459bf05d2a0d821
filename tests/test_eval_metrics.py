"""Feature-set metrics: zero for identical sets, the closed forms they must match, and the direction in
which each moves when the fake set is corrupted (noise, a shift, dropped classes)."""
import numpy as np
import pytest
import scipy.linalg
import torch

from imm_ext.eval import (density_coverage, frechet_distance, kernel_inception_distance, precision_recall,
                          sliced_wasserstein)


def clustered_features(n, dim=16, classes=10, seed=0, keep_classes=None):
    """Features of a 10-class mixture (well separated clusters) like a classifier's penultimate layer."""
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(classes, dim, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    labels = torch.randint(classes, (n,), generator=g)
    if keep_classes is not None:
        labels = labels % keep_classes
    return centres[labels] + torch.randn(n, dim, generator=g, dtype=torch.float64)


def numpy_frechet(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


def test_frechet_distance_matches_a_direct_numpy_computation_and_the_gaussian_closed_form():
    g = torch.Generator().manual_seed(0)
    scale1, scale2 = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([1.5, 1.0, 0.5])
    shift = torch.tensor([0.3, -0.2, 0.1])
    a = torch.randn(200_000, 3, generator=g, dtype=torch.float64) * scale1
    b = torch.randn(200_000, 3, generator=g, dtype=torch.float64) * scale2 + shift
    assert frechet_distance(a, b) == pytest.approx(numpy_frechet(a.numpy(), b.numpy()), rel=1e-9)
    # N(0, diag(s1^2)) vs N(m, diag(s2^2)): ||m||^2 + sum (s1 - s2)^2 = 0.14 + 0.5.
    closed_form = float(shift.square().sum() + (scale1 - scale2).square().sum())
    assert frechet_distance(a, b) == pytest.approx(closed_form, abs=0.02)
    small = torch.randn(5, 8, generator=g, dtype=torch.float64)  # fewer samples than dimensions
    other = torch.randn(6, 8, generator=g, dtype=torch.float64)
    assert frechet_distance(small, other) == pytest.approx(numpy_frechet(small.numpy(), other.numpy()), rel=1e-6)


def test_identical_sets_score_perfectly():
    f = clustered_features(600)
    assert frechet_distance(f, f) < 1e-9
    assert sliced_wasserstein(f, f) == 0
    assert precision_recall(f, f) == {"precision": 1.0, "recall": 1.0}
    # Each point also lies in its own ball: k + 1 balls per point, density (k + 1) / k.
    assert density_coverage(f, f, k=5) == {"density": pytest.approx(1.2), "coverage": 1.0}
    # Unbiased, so only about 0 (within O(1/subset_size)); corrupted sets below score 0.05 to 0.8.
    assert abs(kernel_inception_distance(f, f, subsets=20, subset_size=200)) < 0.03


def all_metrics(real, fake):
    return {"fd": frechet_distance(fake, real), "kid": kernel_inception_distance(fake, real, subsets=50, subset_size=500),
            "sw": sliced_wasserstein(fake, real), **precision_recall(real, fake), **density_coverage(real, fake)}


def test_metrics_move_the_right_way_under_corruption():
    real = clustered_features(1000, seed=1)
    fresh = all_metrics(real, clustered_features(1000, seed=2))
    noisy = [all_metrics(real, clustered_features(1000, seed=2) + level * torch.randn(1000, 16, dtype=torch.float64,
             generator=torch.Generator().manual_seed(3))) for level in (2.0, 4.0)]
    dropped = all_metrics(real, clustered_features(1000, seed=2, keep_classes=4))
    for key in ("fd", "kid", "sw"):
        assert fresh[key] < noisy[0][key] < noisy[1][key]
        assert dropped[key] > 5 * fresh[key]
    assert dropped["kid"] > 0.3 and noisy[1]["kid"] > 0.1
    assert fresh["precision"] > 0.8 and fresh["recall"] > 0.8 and fresh["coverage"] > 0.9
    assert fresh["density"] == pytest.approx(1.0, abs=0.15)
    assert noisy[1]["precision"] < noisy[0]["precision"] < fresh["precision"]  # fidelity falls with noise
    assert noisy[1]["density"] < noisy[0]["density"] < fresh["density"]
    assert dropped["recall"] < 0.6 and dropped["coverage"] < 0.6  # mode dropping shows in diversity ...
    assert dropped["precision"] > 0.8  # ... not in fidelity


def test_sliced_wasserstein_of_one_dimensional_sets_is_the_quantile_distance():
    a = torch.randn(500, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    b = 2 * torch.randn(500, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.7
    expected = (a.sort(0).values - b.sort(0).values).square().mean().sqrt()
    assert sliced_wasserstein(a, b, projections=3) == pytest.approx(float(expected), rel=1e-12)
    assert sliced_wasserstein(a, a + 0.25, projections=3) == pytest.approx(0.25, rel=1e-12)


def test_unequal_sizes_and_numpy_input():
    real, fake = clustered_features(300, seed=1), clustered_features(200, seed=2)
    assert frechet_distance(real.numpy(), fake.float()) == pytest.approx(frechet_distance(real, fake), rel=1e-5)
    assert 0 <= sliced_wasserstein(real, fake) < 1
    assert 0 <= precision_recall(real, fake)["recall"] <= 1


def test_bad_arguments():
    f = torch.randn(20, 4)
    with pytest.raises(ValueError, match="feature dimension"):
        frechet_distance(f, torch.randn(20, 5))
    with pytest.raises(ValueError, match="2-D"):
        frechet_distance(f[0], f)
    with pytest.raises(ValueError, match="NaN"):
        kernel_inception_distance(f, f.clone().fill_(float("nan")))
    with pytest.raises(TypeError, match="features1"):
        frechet_distance([[1.0]], f)
    with pytest.raises(ValueError, match="at least 6 rows"):
        precision_recall(f[:5], f, k=5)
    with pytest.raises(ValueError, match="k must"):
        density_coverage(f, f, k=0)
    with pytest.raises(ValueError, match="projections"):
        sliced_wasserstein(f, f, projections=0)
    with pytest.raises(ValueError, match="subset_size"):
        kernel_inception_distance(f, f, subset_size=1)
