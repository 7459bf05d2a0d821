"""Named IMM settings: the paper's Table 5 for CIFAR-10 and ImageNet-256 latents, and small ones for
2-D data and 8x8 digits (imm-method.md §5.1).

A preset fixes the method, not the network or the optimiser: it builds the parametrisation around a
network you give, the loss, and the default sampler.

    preset = PRESETS["cifar10"]
    model = preset.parametrization(network)
    loss, diagnostics = preset.loss()(model, images)
    samples = preset.sampler(model).sample((16, 3, 32, 32), seed=0)
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Tuple

from .loss import IMMLoss
from .mapping import RMapping
from .parametrization import IMMParametrization, Network
from .sampling import IMMSampler, sampling_times
from .weighting import PriorWeighting


@dataclass(frozen=True)
class IMMPreset:
    """Every method setting of one recipe; `dataclasses.replace(preset, k=13)` derives variants."""

    schedule: str = "fm"
    f_type: str = "euler_fm"
    time_embedding: str = "identity"  # second time input: s ("identity") or t - s ("stride")
    sigma_data: float = 0.5
    particles: int = 4
    mapping: str = "eta"
    k: int = 12
    eps_t: float = 0.0
    T: float = 0.994
    delta: float = 0.0  # minimum t - r gap (the fp16 recipe uses 1e-4)
    weighting: str = "imm"  # w(s, t) of Eq. 13, or "none" (w = 1)
    a: float = 1.0
    b: float = 4.0
    kernel: str = "laplace"
    label_dropout: float = 0.0
    sampling_steps: int = 8
    discretization: str = "uniform"
    mid_eta: Optional[Tuple[float, ...]] = None
    guidance: Optional[float] = None

    def parametrization(self, network: Network, null_label: Optional[int] = None) -> IMMParametrization:
        return IMMParametrization(network, schedule=self.schedule, f_type=self.f_type,
                                  time_embedding=self.time_embedding, sigma_data=self.sigma_data,
                                  null_label=null_label)

    def loss(self) -> IMMLoss:
        mapping = RMapping(self.schedule, kind=self.mapping, k=self.k, eps_t=self.eps_t, T=self.T, delta=self.delta)
        weighting = PriorWeighting(self.schedule, kind=self.weighting, a=self.a, b=self.b)
        return IMMLoss(mapping, weighting, particles=self.particles, kernel=self.kernel,
                       label_dropout=self.label_dropout)

    def sampler(self, model: IMMParametrization, steps: Optional[int] = None,
                guidance: Optional[float] = None) -> IMMSampler:
        """Pushforward sampling on the preset's time grid. Another step count gets the preset's
        discretization, or "uniform" where the preset's grid is custom (its eta midpoints are
        defined for its own step count)."""
        if steps is None or steps == self.sampling_steps:
            steps, discretization, mid_eta = self.sampling_steps, self.discretization, self.mid_eta
        else:
            discretization = "uniform" if self.discretization == "custom" else self.discretization
            mid_eta = None
        times = sampling_times(steps, self.schedule, discretization, eps_t=self.eps_t, T=self.T,
                               mid_eta=None if mid_eta is None else list(mid_eta))
        return IMMSampler(model, times, guidance=self.guidance if guidance is None else guidance)


_IMAGENET = IMMPreset(label_dropout=0.1, guidance=1.5)

PRESETS = {
    # Table 5, CIFAR-10 (unconditional, pixels): Simple-EDM on OT-FM, k = 15, p(t) = U(0.006, 0.994),
    # a = 1, b = 5; 2-step pushforward with eta_{t1} = 1.4.
    "cifar10": IMMPreset(f_type="simple_edm", k=15, eps_t=0.006, b=5.0, sampling_steps=2,
                         discretization="custom", mid_eta=(1.4,)),
    # Table 5, ImageNet-256 latents with DiT (TF32 runs): Euler-FM, k = 12, p(t) = U(0, 0.994), a = 1,
    # b = 4, label dropout 0.1; 8-step uniform pushforward with guidance 1.5.
    "imagenet256": _IMAGENET,
    # The headline FP16 run (Table 8, App. I.6): t - s time input, minimum gap 1e-4, a = 2.
    "imagenet256-fp16": replace(_IMAGENET, time_embedding="stride", delta=1e-4, a=2.0),
    # Ours (imm-method.md §8): 2-D data, Euler-FM, k = 10; 2-step sampling.
    "toy2d": IMMPreset(k=10, sampling_steps=2),
    # Ours: 8x8 digits in [-1, 1] pixel space, the CIFAR recipe with a coarser mapping (k = 12) for a
    # small dataset and short runs.
    "digits": IMMPreset(f_type="simple_edm", k=12, eps_t=0.006, b=5.0, sampling_steps=2,
                        discretization="custom", mid_eta=(1.4,)),
}
