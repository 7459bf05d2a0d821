"""The prior weighting w(s, t) of Eq. 13 (imm-method.md §3.7): closed forms against the definition,
the spec's example values, finiteness at the ends of [0, 1], kind "none", and bad input."""
import math
from decimal import Decimal

import pytest
import torch

from imm_ext.method import PriorWeighting, get_schedule

INTERIOR = torch.linspace(0.001, 0.999, 999, dtype=torch.float64)


def weight_from_definition(t, schedule, a, b):
    """Eq. 13 term by term from the schedule's functions:
    1/2 sigmoid(b - lambda) (-lambda') alpha^a / (alpha^2 + sigma^2)."""
    schedule = get_schedule(schedule)
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    return (0.5 * torch.sigmoid(b - schedule.log_snr(t)) * -schedule.log_snr_derivative(t) * alpha ** a
            / (alpha ** 2 + sigma ** 2))


@pytest.mark.parametrize("schedule", ["fm", "vp_cosine"])
@pytest.mark.parametrize("a,b", [(0.0, 0.0), (1.0, 4.0), (2.0, 4.0), (1.0, 5.0), (1.5, -2.0)])
def test_closed_form_equals_the_definition(schedule, a, b):
    torch.testing.assert_close(PriorWeighting(schedule, a=a, b=b)(INTERIOR),
                               weight_from_definition(INTERIOR, schedule, a, b), rtol=1e-10, atol=0)


def test_fm_closed_form_from_the_spec():
    t, a, b = INTERIOR, 2.0, 4.0
    expected = t * (1 - t) ** (a - 1) / ((t ** 2 + math.exp(-b) * (1 - t) ** 2) * ((1 - t) ** 2 + t ** 2))
    torch.testing.assert_close(PriorWeighting("fm", a=a, b=b)(t), expected, rtol=1e-14, atol=0)


EXAMPLE_TIMES = [0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.994]
EXAMPLES = {  # imm-method.md §3.7, OT-FM, as printed
    (1, 4): ["0.57", "4.91", "5.23", "3.93", "2.45", "1.35", "1.02"],
    (2, 4): ["0.56", "4.42", "3.66", "1.96", "0.74", "0.14", "0.006"],
}


@pytest.mark.parametrize("a,b", EXAMPLES)
def test_example_values_to_printed_precision(a, b):
    weights = PriorWeighting("fm", a=a, b=b)(torch.tensor(EXAMPLE_TIMES)).tolist()
    for weight, printed in zip(weights, EXAMPLES[a, b]):
        half_unit = 0.5 * 10.0 ** Decimal(printed).as_tuple().exponent
        assert abs(weight - float(printed)) <= half_unit * (1 + 1e-9), (weight, printed)


@pytest.mark.parametrize("schedule", ["fm", "vp_cosine"])
@pytest.mark.parametrize("a", [1.0, 2.0])
def test_finite_at_the_ends(schedule, a):
    t = torch.tensor([0.0, 1e-300, 5e-324, 1e-12, 0.994, 0.996, 1 - 1e-12, 1.0], dtype=torch.float64)
    w = PriorWeighting(schedule, a=a, b=4.0)(t)
    assert bool(torch.isfinite(w).all()) and bool((w >= 0).all())
    assert w[0].item() == 0.0  # the limit of the definition at t = 0
    assert w[3].item() == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("schedule", ["fm", "vp_cosine"])
def test_value_at_zero_is_the_limit_of_the_definition(schedule):
    t = torch.tensor([1e-4, 1e-6, 1e-8], dtype=torch.float64)
    defined = weight_from_definition(t, schedule, 1.0, 4.0)
    assert bool((defined[1:] < defined[:-1]).all()) and defined[-1].item() < 1e-5
    assert PriorWeighting(schedule, a=1.0, b=4.0)(0.0).item() == 0.0


def test_a_below_one_diverges_only_at_t_equals_one():
    w = PriorWeighting("fm", a=0.5, b=4.0)(torch.tensor([0.994, 1.0], dtype=torch.float64))
    assert math.isfinite(w[0].item()) and w[1].item() == math.inf


@pytest.mark.parametrize("schedule", ["fm", "vp_cosine"])
def test_none_gives_ones(schedule):
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float32)
    w = PriorWeighting(schedule, kind="none")(t)
    assert w.dtype == torch.float64 and torch.equal(w, torch.ones(3, dtype=torch.float64))


def test_output_is_float64_with_the_shape_of_t():
    w = PriorWeighting("vp_cosine")(torch.rand(4, 2, dtype=torch.float32))
    assert w.dtype == torch.float64 and w.shape == (4, 2)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(kind="elbo"), ValueError, "kind must be one of"),
    (dict(a=-1.0), ValueError, "a must be >= 0"),
    (dict(a=float("nan")), ValueError, "a must be a finite real"),
    (dict(a=True), ValueError, "a must be a finite real"),
    (dict(b=float("inf")), ValueError, "b must be a finite real"),
    (dict(b="4"), ValueError, "b must be a finite real"),
    (dict(schedule="edm"), ValueError, "schedule must be"),
])
def test_bad_settings(kwargs, error, match):
    kwargs = {"schedule": "fm", **kwargs}
    with pytest.raises(error, match=match):
        PriorWeighting(**kwargs)


def test_bad_time():
    with pytest.raises(TypeError, match="t must be a real number"):
        PriorWeighting("fm")("0.5")


def test_schedule_without_a_closed_form():
    class ShiftedSchedule(type(get_schedule("fm"))):
        name = "shifted"

    with pytest.raises(ValueError, match="schedule must be 'fm' or 'vp_cosine'"):
        PriorWeighting(ShiftedSchedule())
