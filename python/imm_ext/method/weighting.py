"""The prior weighting w(s, t) of the IMM loss (Eq. 13, imm-method.md §3.7).

    w(s, t) = 1/2 sigmoid(b - lambda_t) (-d lambda_t / dt) alpha_t^a / (alpha_t^2 + sigma_t^2)

It depends on t only. Written literally, it is 0 * inf at t = 0 (sigmoid -> 0, -lambda' -> inf)
and inf * 0 at t = 1 (alpha = 0, -lambda' = inf). Both schedules therefore use a closed form, the
definition multiplied out (sigmoid(b - lambda) = sigma^2 / (sigma^2 + e^{-b} alpha^2)), which is finite
on [0, 1] for a >= 1 and 0 at t = 0, the limit of the definition (sigmoid(b - lambda) vanishes like
t^2 while -lambda' grows like 1/t):

- "fm" (§3.7): w = t (1-t)^(a-1) / ((t^2 + e^{-b} (1-t)^2) ((1-t)^2 + t^2)).
- "vp_cosine" (derived here with -lambda' = pi / (alpha sigma) and alpha^2 + sigma^2 = 1):
  w = (pi/2) sigma_t alpha_t^(a-1) / (sigma_t^2 + e^{-b} alpha_t^2).

For 0 <= a < 1 the factor alpha_t^(a-1) makes w = inf at t = 1 itself; every recipe has T < 1.
Weights are float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..ops.checks import check_choice
from .arguments import TimeLike, as_float64, check_finite_real
from .schedules import NoiseSchedule, ScheduleLike, get_schedule

WEIGHTING_KINDS = ("imm", "none")


def _flow_matching_weight(t: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """Eq. 13 for "fm" in closed form."""
    one_minus_t = 1.0 - t
    sigmoid_denominator = t ** 2 + math.exp(-b) * one_minus_t ** 2
    return t * one_minus_t ** (a - 1.0) / (sigmoid_denominator * (one_minus_t ** 2 + t ** 2))


def _cosine_weight(t: torch.Tensor, a: float, b: float, schedule: NoiseSchedule) -> torch.Tensor:
    """Eq. 13 for "vp_cosine" in closed form."""
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    return 0.5 * math.pi * sigma * alpha ** (a - 1.0) / (sigma ** 2 + math.exp(-b) * alpha ** 2)


@dataclass(frozen=True)
class PriorWeighting:
    """w(s, t) as a callable of t: `PriorWeighting("fm", a=1, b=4)(t)` returns float64 weights.

    Args:
        schedule: "fm", "vp_cosine" or the corresponding NoiseSchedule.
        kind: "imm" (Eq. 13) or "none" (w = 1, the first row of the paper's Table 4 ablation).
        a: exponent of alpha_t, >= 0 (1 for the TF32 runs, 2 for the fp16 ImageNet headline run).
        b: shift of the sigmoid, a finite real (4 for ImageNet, 5 for CIFAR-10).
    """

    schedule: ScheduleLike
    kind: str = "imm"
    a: float = 1.0
    b: float = 4.0

    def __post_init__(self):
        schedule = get_schedule(self.schedule)
        if schedule.name not in ("fm", "vp_cosine"):
            raise ValueError(f"schedule must be 'fm' or 'vp_cosine' (the schedules with a closed-form "
                             f"weight); got {schedule.name!r}")
        object.__setattr__(self, "schedule", schedule)
        check_choice("kind", self.kind, WEIGHTING_KINDS)
        object.__setattr__(self, "a", check_finite_real("a", self.a))
        object.__setattr__(self, "b", check_finite_real("b", self.b))
        if self.a < 0:
            raise ValueError(f"a must be >= 0; got {self.a}")

    def __call__(self, t: TimeLike) -> torch.Tensor:
        """w(., t) elementwise, float64, same shape as t (t in [0, 1])."""
        t = as_float64(t, "t")
        if self.kind == "none":
            return torch.ones_like(t)
        if self.schedule.name == "fm":
            return _flow_matching_weight(t, self.a, self.b)
        return _cosine_weight(t, self.a, self.b, self.schedule)
