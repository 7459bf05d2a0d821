"""The flow-matching baseline on the same network G as IMM (Lipman et al. 2023; OT path, imm-method.md §1).

Path and target: x_t = (1 - t) x + t eps with eps ~ N(0, sigma_d^2 I) (the "fm" schedule), whose
velocity is d x_t / dt = eps - x. The network is read through the Euler-FM parametrisation of
§2.1, f_{s,t}(x_t) = x_t - (t - s) sigma_d G: there sigma_d G is the velocity, so the baseline trains

    L = E_{x, eps, t ~ U(t_min, t_max)} || sigma_d G(c_in(t) x_t, c t, second(t, t)) - (eps - x) ||^2 / D

with G evaluated on the diagonal s = t (the instantaneous velocity, the limit s -> t of the Euler-FM
jump; under the "stride" time input the second input is 0). An IMM-trained Euler-FM network and a
flow-matching network are then read the same way, and the ODE samplers below step along
-sigma_d G from t = T down to eps_t with Euler or Heun updates at any step count.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from ..ops.checks import check_choice
from .arguments import check_finite_real
from .loss import drop_labels
from .parametrization import IMMParametrization
from .sampling import IMMSampler, sampling_times
from .schedules import FlowMatchingSchedule

FM_SOLVERS = ("euler", "heun")


def _check_flow_matching_model(model) -> IMMParametrization:
    if not isinstance(model, IMMParametrization):
        raise TypeError(f"model must be an IMMParametrization; got {type(model).__name__}")
    if not isinstance(model.schedule, FlowMatchingSchedule) or model.f_type != "euler_fm":
        raise ValueError(f"flow matching reads sigma_d G as the velocity of the 'fm' path, which needs the 'fm' "
                         f"schedule and f_type 'euler_fm'; got schedule {model.schedule.name!r}, f_type "
                         f"{model.f_type!r}")
    return model


def velocity(model: IMMParametrization, x_t: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor] = None,
             guidance: Optional[float] = None) -> torch.Tensor:
    """The model's velocity sigma_d G(x_t, t, s = t) at per-sample (B,) or scalar times t, in x_t's dtype."""
    return model.sigma_data * model.raw_output(x_t, t, t, labels, guidance).to(x_t.dtype)


@dataclass(frozen=True)
class FlowMatchingLoss:
    """Callable velocity loss: `loss, diagnostics = FlowMatchingLoss()(model, x, labels, generator)`.

    Args:
        t_min, t_max: the training range of t, 0 <= t_min < t_max <= 1 (default the whole path [0, 1]).
        label_dropout: probability of replacing each label by the model's null label (for guidance).
    """

    t_min: float = 0.0
    t_max: float = 1.0
    label_dropout: float = 0.0

    def __post_init__(self):
        t_min, t_max = check_finite_real("t_min", self.t_min), check_finite_real("t_max", self.t_max)
        if not 0 <= t_min < t_max <= 1:
            raise ValueError(f"t_min and t_max must satisfy 0 <= t_min < t_max <= 1; got t_min={t_min}, t_max={t_max}")
        dropout = check_finite_real("label_dropout", self.label_dropout)
        if not 0 <= dropout < 1:
            raise ValueError(f"label_dropout must be in [0, 1); got {dropout}")

    def __call__(self, model: IMMParametrization, x: torch.Tensor, labels: Optional[torch.Tensor] = None,
                 generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        model = _check_flow_matching_model(model)
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] == 0:
            raise ValueError("x must be a non-empty tensor of shape (B, ...)")
        batch = x.shape[0]
        u = torch.rand(batch, generator=generator, dtype=torch.float64, device=x.device)
        t = self.t_min + (self.t_max - self.t_min) * u
        noise = model.sigma_data * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        labels = drop_labels(labels, self.label_dropout, model.null_label, generator)
        t_data = t.reshape(-1, *([1] * (x.dim() - 1)))
        x_t = ((1 - t_data).to(x.dtype) * x + t_data.to(x.dtype) * noise)
        error = velocity(model, x_t, t, labels) - (noise - x)
        loss = error.square().flatten(1).mean(1).mean()
        return loss, {"t": t}


class FlowMatchingStep(torch.nn.Module):
    """One ODE step of the velocity field from t to s < t, with the jump-model interface of IMMSampler
    (`step(x_t, t, s, labels=None, guidance=None)`), so that IMMSampler's pushforward loop integrates it.

    "euler": x_s = x_t - (t - s) v(x_t, t)                         (1 network call)
    "heun":  x' = x_t - (t - s) v(x_t, t);  x_s = x_t - (t - s) (v(x_t, t) + v(x', s)) / 2   (2 calls)
    """

    def __init__(self, model: IMMParametrization, solver: str = "euler"):
        super().__init__()
        self.model = _check_flow_matching_model(model)
        self.solver = check_choice("solver", solver, FM_SOLVERS)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor, labels: Optional[torch.Tensor] = None,
                guidance: Optional[float] = None) -> torch.Tensor:
        gap = (t - s).to(x_t.dtype)
        v_t = velocity(self.model, x_t, t, labels, guidance)
        euler = x_t - gap * v_t
        if self.solver == "euler":
            return euler
        return x_t - gap * 0.5 * (v_t + velocity(self.model, euler, s, labels, guidance))


def flow_matching_sampler(model: IMMParametrization, steps: int, solver: str = "euler", eps_t: float = 0.0,
                          T: float = 1.0, guidance: Optional[float] = None) -> IMMSampler:
    """An ODE sampler for a flow-matching network: `steps` uniform steps of `solver` from T to eps_t,
    starting from sigma_d N(0, I) (exact at T = 1, where x_1 = eps). NFE = steps (Euler) or 2 steps (Heun),
    doubled under guidance."""
    step = FlowMatchingStep(model, solver)
    return IMMSampler(step, sampling_times(steps, "fm", "uniform", eps_t=eps_t, T=T), sigma_data=model.sigma_data,
                      schedule="fm", guidance=guidance)
