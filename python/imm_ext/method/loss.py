"""The IMM training objective (imm-method.md §3; paper Eq. 12-13, estimator Eq. 67, Algorithm 1/3).

For a batch of B samples in B / M groups of M particles, each group draws one (s, r, t):
    t ~ U(eps_t, T),  s ~ U(eps_t, t),  r = r(s, t)                        (§3.2, §3.3)
builds x_t and x_r from the same data and noise (§3.4, "re-using x_t for x_r"),
    y_t = f_{s,t}(x_t)            with gradient,
    y_r = f_{s,r}(x_r)            under no_grad, with the current weights (§3.8),
and minimises the weighted squared MMD between the group's y_t and y_r:
    L = mean over groups of w(s, t) * MMD^2_{k_{s,t}}(y_t, y_r)
with the V-statistic (diagonal included, §3.5) and the time-dependent kernel
k_{s,t}(x, y) = exp(-||x - y|| / (|c_out(s, t)| D)) (§3.6): bandwidth |c_out| with distances / D.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Integral
from typing import Callable, Dict, Optional, Tuple, Union

import torch

from ..ops import interpolant_pair, mmd_terms
from ..ops.checks import check_choice
from ..ops.pairwise_checks import KERNELS
from .arguments import check_finite_real
from .mapping import RMapping
from .parametrization import IMMParametrization, c_out
from .weighting import PriorWeighting

LOSS_KERNELS = KERNELS  # every kernel of imm_ext.mmd_loss
# A group with s == t has c_out = 0 and would get an infinite inverse bandwidth (inf * 0 = NaN in
# the gradient, §3.6 / §9.13); its outputs coincide (f_{t,t} = x), so any finite bandwidth gives it
# a zero loss. This floor keeps the kernel finite.
MIN_BANDWIDTH = 1e-12

# A custom discrepancy maps (y_t, y_r, bandwidth) of shapes (G, M, D), (G, M, D), (G,) to the
# per-group squared MMD (G,); the built-in kernels go through imm_ext.mmd_terms.
Discrepancy = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class IMMLoss:
    """Callable IMM loss: `loss, diagnostics = IMMLoss(...)(model, x, labels)`.

    Args:
        mapping: the r(s, t) mapping (its eps_t and T are also the bounds of p(t) and p(s|t)).
        weighting: w(s, t) of Eq. 13.
        particles: M, particles per group; the batch size must be a multiple of it. M = 1 is the
            consistency-model special case (Lemma 1).
        kernel: "laplace" (the paper's), "gaussian", "energy", "imq", or a Discrepancy callable.
        label_dropout: probability of replacing each label by `model.null_label` (§3.9), drawn once
            per sample and shared by both passes.
    """

    mapping: RMapping
    weighting: PriorWeighting
    particles: int = 4
    kernel: Union[str, Discrepancy] = "laplace"
    label_dropout: float = 0.0
    eps_t: float = field(init=False)
    T: float = field(init=False)

    def __post_init__(self):
        if not isinstance(self.mapping, RMapping):
            raise TypeError(f"mapping must be an RMapping; got {type(self.mapping).__name__}")
        if not isinstance(self.weighting, PriorWeighting):
            raise TypeError(f"weighting must be a PriorWeighting; got {type(self.weighting).__name__}")
        if isinstance(self.particles, bool) or not isinstance(self.particles, Integral) or self.particles < 1:
            raise ValueError(f"particles must be a positive integer; got {self.particles!r}")
        if not callable(self.kernel):
            check_choice("kernel", self.kernel, LOSS_KERNELS)
        dropout = check_finite_real("label_dropout", self.label_dropout)
        if not 0 <= dropout < 1:
            raise ValueError(f"label_dropout must be in [0, 1); got {dropout}")
        self.eps_t, self.T = self.mapping.eps_t, self.mapping.T

    # ------------------------------------------------------------------------------------------
    def __call__(self, model: IMMParametrization, x: torch.Tensor, labels: Optional[torch.Tensor] = None,
                 generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Draw times, noise and label dropout for a batch x of shape (B, ...), then `evaluate`."""
        groups = self._groups(x)
        t, s = self.sample_times(groups, generator, x.device)
        noise = model.sigma_data * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        labels = drop_labels(labels, self.label_dropout, model.null_label, generator)
        return self.evaluate(model, x, noise, t, s, labels)

    def sample_times(self, groups: int, generator: Optional[torch.Generator] = None,
                     device: Union[str, torch.device] = "cpu") -> Tuple[torch.Tensor, torch.Tensor]:
        """t ~ U(eps_t, T) and s ~ U(eps_t, t), one pair per group, float64 (§3.2)."""
        u = torch.rand(2, groups, generator=generator, dtype=torch.float64, device=device)
        t = self.eps_t + (self.T - self.eps_t) * u[0]
        s = self.eps_t + (t - self.eps_t) * u[1]
        return t, s

    def evaluate(self, model: IMMParametrization, x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                 s: torch.Tensor, labels: Optional[torch.Tensor] = None
                 ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """The loss for given data x (B, ...), noise (B, ...) and per-group times t, s (G,), float64.

        Returns (loss, diagnostics) with diagnostics: the three kernel terms of Eq. 67 averaged over
        groups (k_tt, k_rr, k_tr), the mean weight, the t - r gaps (min, mean), and t, s, r.
        """
        groups = self._groups(x)
        if noise.shape != x.shape:
            raise ValueError(f"noise must have the shape of x {tuple(x.shape)}; got {tuple(noise.shape)}")
        t, s = t.to(x.device, torch.float64), s.to(x.device, torch.float64)
        if t.shape != (groups,) or s.shape != (groups,):
            raise ValueError(f"t and s must have shape (G,) = ({groups},); got {tuple(t.shape)}, {tuple(s.shape)}")
        r = self.mapping(s, t)
        m = self.particles
        per_sample = lambda v: v.repeat_interleave(m)
        schedule = model.schedule
        x_t, x_r = interpolant_pair(x, noise, schedule.alpha(t), schedule.sigma(t), schedule.alpha(r),
                                    schedule.sigma(r), m)  # one fused pass, same data and noise (§3.4)
        with torch.no_grad():
            y_r = model(x_r, per_sample(r), per_sample(s), labels)
        y_t = model(x_t, per_sample(t), per_sample(s), labels)

        y_t, y_r = y_t.reshape(groups, m, -1), y_r.reshape(groups, m, -1)
        bandwidth = c_out(s, t, model.schedule, model.f_type, model.sigma_data).abs().clamp_min(MIN_BANDWIDTH)
        if callable(self.kernel):
            mmd = self.kernel(y_t, y_r, bandwidth.to(y_t.dtype))
            terms = None
        else:
            terms = mmd_terms(y_t, y_r, kernel=self.kernel, bandwidth=bandwidth, distance_scale="dim")
            mmd = terms[:, 0] + terms[:, 1] - 2 * terms[:, 2]
        weight = self.weighting(t)
        loss = (weight.to(mmd.dtype) * mmd).mean()

        gap = t - r
        diagnostics = {"weight": weight.mean(), "gap_min": gap.min(), "gap_mean": gap.mean(), "t": t, "s": s, "r": r}
        if terms is not None:
            k_tt, k_rr, k_tr = terms.detach().mean(0).unbind()
            diagnostics.update(k_tt=k_tt, k_rr=k_rr, k_tr=k_tr)
        return loss, diagnostics

    def _groups(self, x: torch.Tensor) -> int:
        if not isinstance(x, torch.Tensor) or x.dim() < 1:
            raise TypeError("x must be a tensor of shape (B, ...)")
        if x.shape[0] == 0 or x.shape[0] % self.particles:
            raise ValueError(f"the batch size ({x.shape[0]}) must be a positive multiple of particles ({self.particles})")
        return x.shape[0] // self.particles


def drop_labels(labels: Optional[torch.Tensor], rate: float, null_label: Optional[int],
                generator: Optional[torch.Generator] = None) -> Optional[torch.Tensor]:
    """Classifier-free-guidance training: each label replaced by the null class with probability
    `rate`, one draw per sample (shared by every network pass of that sample)."""
    if labels is None or rate <= 0:
        return labels
    if null_label is None:
        raise ValueError("label_dropout > 0 needs a model with a null_label")
    drop = torch.rand(labels.shape, generator=generator, device=labels.device) < rate
    return torch.where(drop, torch.full_like(labels, null_label), labels)
