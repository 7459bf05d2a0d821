"""Noise schedules and the DDIM interpolant (imm-method.md §1): values, inverses, derivatives, endpoints,
DDIM self-consistency and marginal preservation, and bad input."""
import math

import pytest
import torch

from imm_ext.method import CosineSchedule, FlowMatchingSchedule, ddim, get_schedule, interpolate

SCHEDULE_NAMES = ("fm", "vp_cosine")
GRID = torch.cat([torch.linspace(0, 1, 201, dtype=torch.float64),
                  torch.tensor([1e-12, 1e-6, 0.006, 0.994, 0.996, 1 - 1e-6], dtype=torch.float64)])


def expected_alpha_sigma(name, t):
    if name == "fm":
        return 1 - t, t
    return math.cos(math.pi * t / 2), math.sin(math.pi * t / 2)


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
@pytest.mark.parametrize("t", [0.0, 0.1, 0.25, 0.5, 0.9, 0.994, 1.0])
def test_alpha_sigma_values(name, t):
    schedule = get_schedule(name)
    alpha, sigma = expected_alpha_sigma(name, t)
    assert schedule.alpha(t).item() == pytest.approx(alpha, abs=1e-15)
    assert schedule.sigma(t).item() == pytest.approx(sigma, abs=1e-15)


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_midpoint_has_unit_snr(name):
    schedule = get_schedule(name)
    assert schedule.eta(0.5).item() == pytest.approx(1.0, rel=1e-15)
    assert schedule.log_snr(0.5).item() == pytest.approx(0.0, abs=1e-14)


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_outputs_are_float64_whatever_the_input(name):
    schedule = get_schedule(name)
    t = torch.tensor([0.2, 0.7], dtype=torch.float32)
    for fn in (schedule.alpha, schedule.sigma, schedule.eta, schedule.log_snr, schedule.log_snr_derivative,
               schedule.inverse_eta, schedule.inverse_log_snr):
        assert fn(t).dtype == torch.float64
    assert schedule.alpha(0.3).dtype == torch.float64


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_endpoints_are_exact_and_free_of_nan(name):
    schedule = get_schedule(name)
    ends = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert schedule.eta(ends).tolist() == [0.0, math.inf]
    assert schedule.log_snr(ends).tolist() == [math.inf, -math.inf]
    assert schedule.alpha(1.0).item() == 0.0 and schedule.sigma(0.0).item() == 0.0
    assert schedule.log_snr_derivative(ends).tolist() == [-math.inf, -math.inf]
    assert schedule.inverse_eta(torch.tensor([0.0, math.inf])).tolist() == [0.0, 1.0]
    assert schedule.inverse_log_snr(torch.tensor([math.inf, -math.inf])).tolist() == [0.0, 1.0]


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_eta_and_log_snr_round_trips(name):
    schedule = get_schedule(name)
    torch.testing.assert_close(schedule.inverse_eta(schedule.eta(GRID)), GRID, rtol=0, atol=1e-12)
    torch.testing.assert_close(schedule.inverse_log_snr(schedule.log_snr(GRID)), GRID, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_log_snr_is_decreasing(name):
    log_snr = get_schedule(name).log_snr(GRID.sort().values)
    assert bool((log_snr[1:] <= log_snr[:-1]).all())


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_log_snr_derivative_matches_finite_differences(name):
    schedule = get_schedule(name)
    t = torch.linspace(0.02, 0.98, 97, dtype=torch.float64)
    h = 1e-6
    finite_difference = (schedule.log_snr(t + h) - schedule.log_snr(t - h)) / (2 * h)
    torch.testing.assert_close(schedule.log_snr_derivative(t), finite_difference, rtol=1e-7, atol=0)


def test_closed_form_derivatives_from_the_spec():
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    torch.testing.assert_close(FlowMatchingSchedule().log_snr_derivative(t), -2 / (t * (1 - t)))
    torch.testing.assert_close(CosineSchedule().log_snr_derivative(t), -2 * math.pi / torch.sin(math.pi * t))


def test_fm_and_cosine_inverse_eta_closed_forms():
    eta = torch.tensor([0.0, 0.5, 1.4, 165.0, math.inf], dtype=torch.float64)
    assert FlowMatchingSchedule().inverse_eta(1.4).item() == pytest.approx(1.4 / 2.4, rel=1e-15)
    torch.testing.assert_close(CosineSchedule().inverse_eta(eta), torch.atan(eta) * 2 / math.pi)


# ---------------------------------------------------------------------------------------------------------
# DDIM interpolant (Eq. 11) and x_t = alpha_t x + sigma_t eps


def batch(seed=0, b=6):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, 4, generator=gen, dtype=torch.float64)
    noise = torch.randn(b, 3, 4, generator=gen, dtype=torch.float64)
    t = 0.05 + 0.95 * torch.rand(b, generator=gen, dtype=torch.float64)
    r = t * torch.rand(b, generator=gen, dtype=torch.float64)
    s = r * torch.rand(b, generator=gen, dtype=torch.float64)
    return x, noise, s, r, t


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_ddim_is_self_consistent(name):
    x, noise, s, r, t = batch()
    x_t = interpolate(x, noise, t, name)
    two_jumps = ddim(ddim(x_t, x, r, t, name), x, s, r, name)
    torch.testing.assert_close(two_jumps, ddim(x_t, x, s, t, name), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_ddim_preserves_the_interpolant(name):
    x, noise, _, r, t = batch(seed=1)
    torch.testing.assert_close(ddim(interpolate(x, noise, t, name), x, r, t, name),
                               interpolate(x, noise, r, name), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_ddim_from_pure_noise_at_t_equals_one(name):
    x, noise, _, _, t = batch(seed=2)
    schedule = get_schedule(name)
    expected = schedule.alpha(t)[:, None, None] * x + schedule.sigma(t)[:, None, None] * noise
    torch.testing.assert_close(ddim(noise, x, t, 1.0, name), expected, rtol=1e-12, atol=1e-12)


def test_interpolate_values_and_time_broadcasting():
    x, noise, _, _, t = batch(seed=3)
    torch.testing.assert_close(interpolate(x, noise, t, "fm"), (1 - t)[:, None, None] * x + t[:, None, None] * noise)
    torch.testing.assert_close(interpolate(x, noise, 0.25, "fm"), 0.75 * x + 0.25 * noise)
    assert torch.equal(interpolate(x, noise, 0.0, "fm"), x)


def test_interpolate_keeps_the_data_dtype():
    x, noise, _, _, t = batch(seed=4)
    out = interpolate(x.float(), noise.float(), t, "vp_cosine")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, interpolate(x, noise, t, "vp_cosine").float())


def test_ddim_divides_by_sigma_t_so_t_zero_is_undefined():
    x, noise, _, _, _ = batch(seed=5, b=2)
    assert torch.isnan(ddim(x, x, 0.0, 0.0, "fm")).all()


def test_schedule_lookup():
    assert isinstance(get_schedule("fm"), FlowMatchingSchedule)
    assert isinstance(get_schedule("vp_cosine"), CosineSchedule)
    schedule = CosineSchedule()
    assert get_schedule(schedule) is schedule


# ---------------------------------------------------------------------------------------------------------
# Bad input

X, NOISE, _, _, T_BATCH = batch(seed=6, b=4)


@pytest.mark.parametrize("name", ["cosine", "FM", "", None, 3])
def test_unknown_schedule_name(name):
    with pytest.raises(ValueError, match="schedule must be"):
        get_schedule(name)


@pytest.mark.parametrize("call,error,match", [
    (lambda: FlowMatchingSchedule().alpha("0.5"), TypeError, "t must be a real number"),
    (lambda: FlowMatchingSchedule().eta(True), TypeError, "t must be a real number"),
    (lambda: CosineSchedule().sigma(torch.tensor([True])), TypeError, "t must be a real tensor"),
    (lambda: CosineSchedule().inverse_eta(torch.tensor([1j])), TypeError, "eta must be a real tensor"),
    (lambda: CosineSchedule().inverse_log_snr([0.0]), TypeError, "log_snr must be a real number"),
    (lambda: interpolate(X, NOISE, T_BATCH[:3], "fm"), ValueError, r"t must be a scalar or have shape \(B,\)"),
    (lambda: interpolate(X, NOISE, T_BATCH[:, None], "fm"), ValueError, r"t must be a scalar or have shape"),
    (lambda: interpolate(X, NOISE[:2], T_BATCH, "fm"), ValueError, "noise must match x"),
    (lambda: interpolate(X, NOISE.float(), T_BATCH, "fm"), ValueError, "noise must match x"),
    (lambda: interpolate(X.numpy(), NOISE, T_BATCH, "fm"), TypeError, "x must be a torch.Tensor"),
    (lambda: interpolate(X.long(), NOISE.long(), T_BATCH, "fm"), TypeError, "x must be a floating-point"),
    (lambda: interpolate(X, NOISE, T_BATCH, "edm"), ValueError, "schedule must be"),
    (lambda: ddim(X, X, 0.1, T_BATCH[:2], "fm"), ValueError, r"t must be a scalar or have shape"),
    (lambda: ddim(X, X, "0.1", 0.5, "fm"), TypeError, "s must be a real number"),
    (lambda: ddim(X[0], X, 0.1, 0.5, "fm"), ValueError, "x_t must match x"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
