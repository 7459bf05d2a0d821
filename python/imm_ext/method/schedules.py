"""Noise schedules of the interpolant x_t = alpha_t x + sigma_t eps, and the DDIM interpolant (Eq. 11).

Two schedules (imm-method.md §1), t in [0, 1] with t = 0 data and t = 1 prior:

- "fm" (OT flow matching): alpha_t = 1 - t, sigma_t = t.
- "vp_cosine": alpha_t = cos(pi t / 2), sigma_t = sin(pi t / 2).

Every schedule function casts its argument to float64 and returns float64, whatever the input dtype:
the time quantities of IMM need it (t - r reaches 1e-7 near T). The endpoints are exact: at t = 0,
eta = 0 and lambda = +inf; at t = 1, alpha = 0, eta = +inf and lambda = -inf, with no NaN; the
inverses map 0 and inf back to the endpoints.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Union

import torch

from .arguments import TimeLike, as_float64, broadcast_to_data


class NoiseSchedule(ABC):
    """alpha_t, sigma_t and the quantities derived from them; all float64 tensors."""

    name: ClassVar[str]

    @abstractmethod
    def alpha(self, t: TimeLike) -> torch.Tensor:
        """Signal coefficient alpha_t."""

    @abstractmethod
    def sigma(self, t: TimeLike) -> torch.Tensor:
        """Noise coefficient sigma_t."""

    @abstractmethod
    def log_snr_derivative(self, t: TimeLike) -> torch.Tensor:
        """d lambda_t / dt (negative: the SNR falls as t grows)."""

    @abstractmethod
    def inverse_log_snr(self, log_snr: TimeLike) -> torch.Tensor:
        """The t with lambda_t = log_snr; +inf -> 0 and -inf -> 1."""

    @abstractmethod
    def inverse_eta(self, eta: TimeLike) -> torch.Tensor:
        """The t with eta_t = eta, for eta >= 0; 0 -> 0 and +inf -> 1."""

    def log_snr(self, t: TimeLike) -> torch.Tensor:
        """lambda_t = log(alpha_t^2 / sigma_t^2) = 2 log(alpha_t / sigma_t) (§1)."""
        t = as_float64(t, "t")
        return 2.0 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def eta(self, t: TimeLike) -> torch.Tensor:
        """Noise-to-signal ratio eta_t = sigma_t / alpha_t (the authors' code calls it "nt")."""
        t = as_float64(t, "t")
        return self.sigma(t) / self.alpha(t)


@dataclass(frozen=True)
class FlowMatchingSchedule(NoiseSchedule):
    """OT flow matching: alpha_t = 1 - t, sigma_t = t, so eta_t = t / (1 - t)."""

    name: ClassVar[str] = "fm"

    def alpha(self, t: TimeLike) -> torch.Tensor:
        return 1.0 - as_float64(t, "t")

    def sigma(self, t: TimeLike) -> torch.Tensor:
        return as_float64(t, "t").clone()

    def log_snr_derivative(self, t: TimeLike) -> torch.Tensor:
        """d lambda/dt = -2 (1/(1-t) + 1/t) = -2 / (t (1 - t)); -inf at both endpoints."""
        t = as_float64(t, "t")
        return -2.0 / (t * (1.0 - t))

    def inverse_log_snr(self, log_snr: TimeLike) -> torch.Tensor:
        """t = 1 / (1 + exp(lambda/2)) = sigmoid(-lambda/2)."""
        return torch.sigmoid(-0.5 * as_float64(log_snr, "log_snr"))

    def inverse_eta(self, eta: TimeLike) -> torch.Tensor:
        """t = eta / (1 + eta), with eta = inf -> 1 exactly (inf/inf would be NaN)."""
        eta = as_float64(eta, "eta")
        return torch.where(torch.isinf(eta), torch.ones_like(eta), eta / (1.0 + eta))


@dataclass(frozen=True)
class CosineSchedule(NoiseSchedule):
    """Variance-preserving cosine: alpha_t = cos(pi t / 2), sigma_t = sin(pi t / 2), eta_t = tan(pi t / 2).

    alpha_t is evaluated as sin(pi (1 - t) / 2), which equals cos(pi t / 2) but is exactly 0 at t = 1
    (cos(pi / 2) is 6e-17 in floating point), so that eta_1 = inf and lambda_1 = -inf as for "fm".
    """

    name: ClassVar[str] = "vp_cosine"

    def alpha(self, t: TimeLike) -> torch.Tensor:
        return torch.sin(0.5 * math.pi * (1.0 - as_float64(t, "t")))

    def sigma(self, t: TimeLike) -> torch.Tensor:
        return torch.sin(0.5 * math.pi * as_float64(t, "t"))

    def log_snr_derivative(self, t: TimeLike) -> torch.Tensor:
        """d lambda/dt = -2 pi / sin(pi t) = -pi / (alpha_t sigma_t); -inf at both endpoints."""
        t = as_float64(t, "t")
        return -math.pi / (self.alpha(t) * self.sigma(t))

    def inverse_log_snr(self, log_snr: TimeLike) -> torch.Tensor:
        """t = (2/pi) arctan(exp(-lambda/2)), from lambda = -2 log tan(pi t / 2)."""
        return self.inverse_eta(torch.exp(-0.5 * as_float64(log_snr, "log_snr")))

    def inverse_eta(self, eta: TimeLike) -> torch.Tensor:
        """t = (2/pi) arctan(eta); arctan(inf) = pi/2 gives t = 1."""
        return torch.atan(as_float64(eta, "eta")) * (2.0 / math.pi)


SCHEDULES = {schedule.name: schedule for schedule in (FlowMatchingSchedule(), CosineSchedule())}

ScheduleLike = Union[str, NoiseSchedule]


def get_schedule(schedule: ScheduleLike) -> NoiseSchedule:
    """The schedule named `schedule` ("fm" or "vp_cosine"); a NoiseSchedule instance is returned as is.
    Errors name the `schedule` argument, which is what every caller calls it."""
    if isinstance(schedule, NoiseSchedule):
        return schedule
    if not isinstance(schedule, str) or schedule not in SCHEDULES:
        raise ValueError(f"schedule must be a NoiseSchedule or one of {', '.join(map(repr, SCHEDULES))}; "
                         f"got {schedule!r}")
    return SCHEDULES[schedule]


def _check_data(data: torch.Tensor, name: str) -> None:
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(data).__name__}")
    if not data.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor; got dtype {data.dtype}")


def _check_like(other: torch.Tensor, other_name: str, x: torch.Tensor) -> None:
    _check_data(other, other_name)
    if other.shape != x.shape or other.dtype != x.dtype or other.device != x.device:
        raise ValueError(f"{other_name} must match x in shape, dtype and device; got {tuple(other.shape)} "
                         f"{other.dtype} on {other.device} against {tuple(x.shape)} {x.dtype} on {x.device}")


def interpolate(x: torch.Tensor, noise: torch.Tensor, t: TimeLike, schedule: ScheduleLike) -> torch.Tensor:
    """x_t = alpha_t x + sigma_t noise (§1), the marginal-preserving way to build x_t and x_r (§3.4).

    Building x_r from the same x and noise as x_t equals DDIM(x_t, x, r, t) exactly, without dividing
    by sigma_t (0/0 at t = 0). `t` is a scalar or one time per sample, shape (B,) for data (B, ...).
    Coefficients are computed in float64 and cast to the data's dtype; pass float64 data for a
    float64 result.
    """
    schedule = get_schedule(schedule)
    _check_data(x, "x")
    _check_like(noise, "noise", x)
    t = broadcast_to_data(t, x, "t")
    return schedule.alpha(t).to(x.dtype) * x + schedule.sigma(t).to(x.dtype) * noise


def ddim(x_t: torch.Tensor, x: torch.Tensor, s: TimeLike, t: TimeLike, schedule: ScheduleLike) -> torch.Tensor:
    """The DDIM interpolant of Eq. 11, taking x_t at time t to time s <= t given the clean sample x:

        DDIM(x_t, x, s, t) = (alpha_s - (sigma_s / sigma_t) alpha_t) x + (sigma_s / sigma_t) x_t.

    Argument order: the target time s comes before the current time t; the move is always "from t
    to s" (the paper also writes DDIM(x_t, x, t, s) in App. C.1 with the same meaning).

    It divides by sigma_t, so the result is NaN where sigma_t = 0 (t = 0, reachable when eps_t = 0).
    To noise a clean sample to two times, use `interpolate` with shared noise instead (§1, §3.4).
    `s` and `t` are scalars or shape (B,) for data (B, ...); coefficients are computed in float64 and
    cast to the data's dtype.
    """
    schedule = get_schedule(schedule)
    _check_data(x, "x")
    _check_like(x_t, "x_t", x)
    s = broadcast_to_data(s, x, "s")
    t = broadcast_to_data(t, x, "t")
    ratio = schedule.sigma(s) / schedule.sigma(t)
    coef_x = schedule.alpha(s) - ratio * schedule.alpha(t)
    return coef_x.to(x.dtype) * x + ratio.to(x.dtype) * x_t
