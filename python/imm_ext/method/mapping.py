"""The mapping r(s, t) that picks the intermediate time of IMM's induction step (imm-method.md §3.3).

For s < t, r(s, t) in [s, t) is one small step from t towards s, taken in some monotone quantity
u(t) of time with a constant step size, and clamped so that it never passes s:

    r(s, t) = max(s, min(t - delta, u^{-1}(u(t) - (u(T) - u(eps_t)) / 2^k)))

Kinds (the quantity u that moves by a constant amount):

- "eta" (the paper's default): u = eta_t = sigma_t / alpha_t, a constant decrement in eta.
- "t": u = t, a constant decrement in t.
- "lambda": u = -lambda_t, a constant decrement in log-SNR towards the data (lambda grows as t falls,
  so this is lambda(r) = lambda(t) + (lambda(eps_t) - lambda(T)) / 2^k).
- "inv_eta": u = -1/eta_t, a constant increment in 1/eta:
  1/eta(r) = 1/eta(t) + (1/eta(eps_t) - 1/eta(T)) / 2^k.

The step spans the quantity over the training range [eps_t, T]. For "eta" the paper writes
eta_max ~ 160, eta_min ~ 0; the authors' code stores eta(T) and eta(eps_t), which is what we use by
default (eta(0.994) = 165.7 for "fm"). `span` overrides the range, e.g. span=160 for the literal
reading of the paper and rosinality's reimplementation.

All arithmetic is float64. r == s exactly whenever the step overshoots s (u(t) - step <= u(s)),
which also covers the negative and NaN values the inverse would produce.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Integral
from typing import Optional

import torch

from ..ops.checks import require_all
from ..ops.checks import check_choice
from .arguments import TimeLike, as_float64, check_finite_real, check_time_bounds
from .schedules import NoiseSchedule, ScheduleLike, get_schedule

MAPPING_KINDS = ("eta", "t", "lambda", "inv_eta")
# The paper uses k in {10..15}. The cap of 30 keeps t - r far above float64 spacing: the "eta" gap at
# t = 0.994 is 6e-3 / 2^k, which would reach the spacing of t (1e-16) near k = 45.
MIN_K, MAX_K = 1, 30


@dataclass(frozen=True)
class RMapping:
    """r(s, t) of §3.3 as a callable: `RMapping("fm", k=12)(s, t)` returns r as float64.

    Args:
        schedule: "fm", "vp_cosine" or a NoiseSchedule.
        kind: "eta" (default), "t", "lambda" or "inv_eta" (see the module docstring).
        k: the step is (u(T) - u(eps_t)) / 2^k; an integer in [1, 30]. 12 for ImageNet, 15 for CIFAR-10.
        eps_t, T: the training time range [eps_t, T], 0 <= eps_t < T <= 1. "fm" ImageNet: 0 and 0.994.
        delta: minimum gap, r <= t - delta wherever s <= t - delta (App. I.6 uses 1e-4 for fp16); >= 0.
        span: u(T) - u(eps_t) to use instead of the value from the bounds; positive and finite.
    """

    schedule: ScheduleLike
    kind: str = "eta"
    k: int = 12
    eps_t: float = 0.0
    T: float = 0.994
    delta: float = 0.0
    span: Optional[float] = None
    step: float = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "schedule", get_schedule(self.schedule))
        check_choice("kind", self.kind, MAPPING_KINDS)
        if isinstance(self.k, bool) or not isinstance(self.k, Integral) or not MIN_K <= self.k <= MAX_K:
            raise ValueError(f"k must be an integer in [{MIN_K}, {MAX_K}]; got {self.k!r}")
        eps_t, T = check_time_bounds(self.eps_t, self.T)
        delta = check_finite_real("delta", self.delta)
        if delta < 0:
            raise ValueError(f"delta must be >= 0; got {delta}")
        if self.span is None:
            span = self._span_from_bounds(eps_t, T)
        else:
            span = check_finite_real("span", self.span)
            if span <= 0:
                raise ValueError(f"span must be positive; got {span}")
        for name, value in (("k", int(self.k)), ("eps_t", eps_t), ("T", T), ("delta", delta)):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "step", span / 2 ** self.k)

    def _span_from_bounds(self, eps_t: float, T: float) -> float:
        low, high = (float(u) for u in self._progress(torch.tensor([eps_t, T], dtype=torch.float64)))
        if not math.isfinite(low):
            raise ValueError(f"eps_t={eps_t} makes the {self.kind!r} quantity infinite at the lower bound; "
                             f"use eps_t > 0 (or pass span)")
        if not math.isfinite(high):
            raise ValueError(f"T={T} makes the {self.kind!r} quantity infinite at the upper bound; "
                             f"use T < 1 (or pass span)")
        return high - low

    def _progress(self, t: torch.Tensor) -> torch.Tensor:
        """u(t): the quantity that falls by a constant step from t to r; increasing in t."""
        schedule: NoiseSchedule = self.schedule
        if self.kind == "eta":
            return schedule.eta(t)
        if self.kind == "t":
            return t
        if self.kind == "lambda":
            return -schedule.log_snr(t)
        return -1.0 / schedule.eta(t)

    def _time_from_progress(self, u: torch.Tensor) -> torch.Tensor:
        """u^{-1}; may be NaN or out of range where u has overshot, which the caller masks out."""
        schedule: NoiseSchedule = self.schedule
        if self.kind == "eta":
            return schedule.inverse_eta(u)
        if self.kind == "t":
            return u
        if self.kind == "lambda":
            return schedule.inverse_log_snr(-u)
        return schedule.inverse_eta(-1.0 / u)

    def __call__(self, s: TimeLike, t: TimeLike) -> torch.Tensor:
        """r(s, t) as float64, broadcast over s and t; needs 0 <= s <= t <= 1 elementwise.

        r lies in [s, t) wherever s < t (r = s = t where s = t), and r = s exactly where one step
        from t reaches s or beyond.
        """
        s, t = as_float64(s, "s"), as_float64(t, "t")
        s = s.to(t.device) if s.dim() == 0 else s
        t = t.to(s.device) if t.dim() == 0 else t
        if s.device != t.device:
            raise ValueError(f"s and t must be on the same device; got s on {s.device}, t on {t.device}")
        try:
            s, t = torch.broadcast_tensors(s, t)
        except RuntimeError:
            raise ValueError(f"s and t must broadcast; got shapes {tuple(s.shape)} and {tuple(t.shape)}") from None
        require_all((s >= 0) & (t <= 1), "s and t must lie in [0, 1]")
        require_all(s <= t, "s must be <= t elementwise (r(s, t) steps from t towards s)")
        target = self._progress(t) - self.step
        # The largest float64 below t keeps r < t when the step is below t's float64 spacing.
        upper = torch.nextafter(t, torch.full_like(t, -math.inf))
        if self.delta > 0:
            upper = torch.minimum(upper, t - self.delta)
        stepped = torch.minimum(self._time_from_progress(target), upper)
        r = torch.where(target > self._progress(s), stepped, s)
        return torch.maximum(r, s)
