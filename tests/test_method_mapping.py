"""The r(s, t) mapping (imm-method.md §3.3): r in [s, t), r = s on overshoot, the gap table, the minimum
gap delta, monotonicity in t, and bad input."""
import math
from decimal import Decimal

import pytest
import torch

from imm_ext.method import MAPPING_KINDS, RMapping, get_schedule

# Settings per kind that give every kind a finite step: "lambda" needs eps_t > 0 (lambda(0) = inf),
# "inv_eta" needs eps_t > 0 (1/eta(0) = inf) and accepts T = 1 (the paper's ablation settings, §1).
BOUNDS = {"eta": (0.0, 0.994), "t": (0.0, 1.0), "lambda": (0.001, 0.994), "inv_eta": (0.005, 1.0)}


def random_pairs(eps_t, T, n=4000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    t = eps_t + (T - eps_t) * torch.rand(n, generator=gen, dtype=torch.float64)
    s = eps_t + (t - eps_t) * torch.rand(n, generator=gen, dtype=torch.float64)
    return s, t


@pytest.mark.parametrize("schedule", ["fm", "vp_cosine"])
@pytest.mark.parametrize("kind", MAPPING_KINDS)
@pytest.mark.parametrize("k", [1, 4, 12, 15, 30])
def test_r_lies_in_s_to_t(schedule, kind, k):
    eps_t, T = BOUNDS[kind]
    mapping = RMapping(schedule, kind=kind, k=k, eps_t=eps_t, T=T)
    s, t = random_pairs(eps_t, T)
    r = mapping(s, t)
    assert r.dtype == torch.float64 and r.shape == s.shape
    assert bool((r >= s).all()) and bool((r < t).all())


@pytest.mark.parametrize("schedule", ["fm", "vp_cosine"])
@pytest.mark.parametrize("k", [3, 12])
def test_r_equals_s_exactly_where_the_eta_step_overshoots(schedule, k):
    mapping = RMapping(schedule, k=k)
    eta = get_schedule(schedule).eta
    s, t = random_pairs(0.0, 0.994, seed=1)
    r = mapping(s, t)
    overshoot = eta(t) - mapping.step <= eta(s)
    assert 0 < int(overshoot.sum()) < overshoot.numel()
    assert torch.equal(r[overshoot], s[overshoot])
    assert bool((r[~overshoot] > s[~overshoot]).all())


@pytest.mark.parametrize("kind", MAPPING_KINDS)
def test_r_equals_s_when_s_equals_t_and_at_t_zero(kind):
    eps_t, T = BOUNDS[kind]
    t = torch.tensor([0.0, eps_t, 0.3, T], dtype=torch.float64)
    assert torch.equal(RMapping("fm", kind=kind, eps_t=eps_t, T=T)(t, t), t)


@pytest.mark.parametrize("kind", MAPPING_KINDS)
def test_r_is_nondecreasing_in_t(kind):
    eps_t, T = BOUNDS[kind]
    t = torch.linspace(max(eps_t, 0.2), T, 2001, dtype=torch.float64)
    r = RMapping("vp_cosine", kind=kind, k=6, eps_t=eps_t, T=T)(torch.full_like(t, 0.2), t)
    assert bool((r[1:] >= r[:-1]).all())


def test_each_kind_steps_by_its_constant():
    fm = get_schedule("fm")
    t = torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64)
    s = torch.zeros_like(t)
    r = RMapping("fm", kind="t", k=10, eps_t=0.0, T=1.0)(s, t)
    torch.testing.assert_close(t - r, torch.full_like(t, 1 / 1024), rtol=1e-12, atol=0)
    eta_mapping = RMapping("fm", kind="eta", k=10)
    torch.testing.assert_close(fm.eta(t) - fm.eta(eta_mapping(s, t)), torch.full_like(t, eta_mapping.step))
    lambda_mapping = RMapping("fm", kind="lambda", k=10, eps_t=0.001, T=0.994)
    torch.testing.assert_close(fm.log_snr(lambda_mapping(s, t)) - fm.log_snr(t),
                               torch.full_like(t, lambda_mapping.step))
    inv_eta_mapping = RMapping("fm", kind="inv_eta", k=10, eps_t=0.005, T=1.0)
    assert inv_eta_mapping.step == pytest.approx((1 / fm.eta(0.005).item() - 0.0) / 1024, rel=1e-15)
    torch.testing.assert_close(1 / fm.eta(inv_eta_mapping(s, t)) - 1 / fm.eta(t),
                               torch.full_like(t, inv_eta_mapping.step))


def test_default_eta_step_uses_eta_at_the_time_bounds():
    mapping = RMapping("fm", k=15, eps_t=0.006, T=0.994)
    assert mapping.step == pytest.approx((0.994 / 0.006 - 0.006 / 0.994) / 2 ** 15, rel=1e-14)
    assert RMapping("fm", k=12, eps_t=0.0, T=0.994, span=160.0).step == 160 / 4096


# t - r at s = eps_t from the table of imm-method.md §3.3, as printed.
GAP_TABLE_TIMES = [0.1, 0.5, 0.9, 0.994]
GAP_TABLE = {
    "imagenet": dict(k=12, eps_t=0.0, gaps=["0.033", "0.010", "3.9e-4", "1.4e-6"]),
    "cifar": dict(k=15, eps_t=0.006, gaps=["0.0040", "0.0012", "4.9e-5", "1.8e-7"]),
}


def printed_tolerance(text):
    """Half a unit in the last printed digit (plus float slack)."""
    return 0.5 * 10.0 ** Decimal(text).as_tuple().exponent * (1 + 1e-9)


def table_gaps(mapping, eps_t):
    t = torch.tensor(GAP_TABLE_TIMES, dtype=torch.float64)
    return (t - mapping(torch.full_like(t, eps_t), t)).tolist()


@pytest.mark.parametrize("dataset", GAP_TABLE)
def test_gap_table_is_reproduced_with_eta_span_160(dataset):
    # The table reproduces to its printed precision with the paper's literal eta_max - eta_min = 160
    # (eps_eta = 160 / 2^k) and T = 0.994; eps_t does not matter here. With our default span
    # eta(T) - eta(eps_t) = 165.7 the ImageNet gaps print as 0.034, 0.010, 4.1e-4, 1.5e-6 instead.
    row = GAP_TABLE[dataset]
    mapping = RMapping("fm", k=row["k"], eps_t=row["eps_t"], T=0.994, span=160.0)
    for gap, printed in zip(table_gaps(mapping, row["eps_t"]), row["gaps"]):
        assert abs(gap - float(printed)) <= printed_tolerance(printed), (gap, printed)


@pytest.mark.parametrize("dataset", GAP_TABLE)
def test_default_span_scales_the_table_gaps_by_the_span_ratio(dataset):
    # With a small step, t - r ~ step * (1 - t)^2, so the default span eta(T) - eta(eps_t) = 165.7
    # gives gaps 165.7 / 160 = 1.035 times those of the table (to 1%).
    row = GAP_TABLE[dataset]
    default = RMapping("fm", k=row["k"], eps_t=row["eps_t"], T=0.994)
    literal = RMapping("fm", k=row["k"], eps_t=row["eps_t"], T=0.994, span=160.0)
    ratio = default.step / literal.step
    assert ratio == pytest.approx(165.7 / 160, rel=1e-3)
    for gap, gap_160 in zip(table_gaps(default, row["eps_t"]), table_gaps(literal, row["eps_t"])):
        assert gap / gap_160 == pytest.approx(ratio, rel=1e-2)


@pytest.mark.parametrize("kind", MAPPING_KINDS)
def test_delta_enforces_a_minimum_gap(kind):
    eps_t, T = BOUNDS[kind]
    delta = 1e-4
    mapping = RMapping("fm", kind=kind, k=15, eps_t=eps_t, T=T, delta=delta)
    s, t = random_pairs(eps_t, T, seed=2)
    r = mapping(s, t)
    room = s <= t - delta
    assert bool((t - r)[room].ge(delta - 1e-15).all())
    assert torch.equal(r[~room], s[~room])
    assert bool((r >= s).all()) and bool((r < t).all())
    # Where the plain step is wider than delta, delta changes nothing.
    plain = RMapping("fm", kind=kind, k=15, eps_t=eps_t, T=T)(s, t)
    wide = t - plain >= delta
    assert torch.equal(r[wide], plain[wide])


def test_step_below_float64_spacing_of_t_still_gives_r_below_t():
    # A tiny time range makes t - r smaller than the spacing of t: r is the float64 just below t.
    mapping = RMapping("fm", kind="t", k=30, eps_t=0.5, T=0.5 + 1e-12)
    t = torch.tensor([0.5 + 1e-12], dtype=torch.float64)
    r = mapping(torch.tensor([0.5], dtype=torch.float64), t)
    assert bool((r < t).all()) and bool((r >= 0.5).all())


def test_s_and_t_broadcast_and_accept_floats():
    mapping = RMapping("fm")
    r = mapping(0.0, torch.tensor([0.2, 0.5], dtype=torch.float32))
    assert r.shape == (2,) and r.dtype == torch.float64
    assert mapping(0.1, 0.5).shape == ()


@pytest.mark.parametrize("kwargs,match", [
    (dict(kind="log_snr"), "kind must be one of"),
    (dict(k=0), r"k must be an integer in \[1, 30\]"),
    (dict(k=31), r"k must be an integer in \[1, 30\]"),
    (dict(k=12.0), "k must be an integer"),
    (dict(k=True), "k must be an integer"),
    (dict(eps_t=-0.1), "eps_t must be >= 0"),
    (dict(eps_t=float("nan")), "eps_t must be a finite real"),
    (dict(T=1.5), "T must be <= 1"),
    (dict(eps_t=0.5, T=0.5), "eps_t must be smaller than T"),
    (dict(eps_t=0.9, T=0.5), "eps_t must be smaller than T"),
    (dict(delta=-1e-4), "delta must be >= 0"),
    (dict(delta="1e-4"), "delta must be a finite real"),
    (dict(span=0.0), "span must be positive"),
    (dict(span=math.inf), "span must be a finite real"),
    (dict(kind="eta", T=1.0), "T=1.0 makes the 'eta' quantity infinite"),
    (dict(kind="lambda", eps_t=0.0), "eps_t=0.0 makes the 'lambda' quantity infinite"),
    (dict(kind="inv_eta", eps_t=0.0, T=1.0), "eps_t=0.0 makes the 'inv_eta' quantity infinite"),
    (dict(schedule="ve"), "schedule must be"),
])
def test_bad_settings(kwargs, match):
    kwargs = {"schedule": "fm", **kwargs}
    with pytest.raises(ValueError, match=match):
        RMapping(**kwargs)


@pytest.mark.parametrize("s,t,error,match", [
    (0.6, 0.5, ValueError, "s must be <= t"),
    (-0.1, 0.5, ValueError, r"must lie in \[0, 1\]"),
    (0.1, 1.5, ValueError, r"must lie in \[0, 1\]"),
    (0.1, float("nan"), ValueError, r"must lie in \[0, 1\]"),
    (torch.zeros(3), torch.ones(2) / 2, ValueError, "s and t must broadcast"),
    ("0", 0.5, TypeError, "s must be a real number"),
    (0.1, torch.tensor([True]), TypeError, "t must be a real tensor"),
])
def test_bad_times(s, t, error, match):
    with pytest.raises(error, match=match):
        RMapping("fm")(s, t)
