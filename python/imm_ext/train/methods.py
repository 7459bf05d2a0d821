"""The two objectives a run trains with, each resolved once from `config.method` to one object that owns
everything that differs between them: how the network is read (the parametrisation), the loss, the
sampler, the batch unit no micro-batch may split, the checks of its settings and its precision defaults.

- IMM (imm-method.md): f_{s,t} on the recipe's schedule and f_type, the MMD loss over groups of M
  particles (Eq. 12), pushforward sampling on the recipe's time grid (Algorithm 2).
- Flow matching, the baseline: the same network read as a velocity field through the Euler-FM
  parametrisation on the "fm" path, the velocity loss, Euler or Heun steps from fm_t_max to fm_t_min.

    method = training_method(config.method)
    model = method.parametrization(network, null_label)
    loss, diagnostics = method.loss()(model, x, labels, generator)
    samples = method.sampler(model, steps=2).sample((16, 1, 8, 8), seed=0)
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import fields, replace
from typing import Callable, Dict, Optional

from ..method import IMMParametrization, IMMSampler
from ..method.flow_matching import FlowMatchingLoss, flow_matching_sampler
from ..method.presets import IMMPreset

# App. I.6: below fp16 resolution near T, t - r must be kept at least this large.
FP16_MIN_GAP = 1e-4


class TrainingMethod(ABC):
    """What both methods share: the IMM settings as an IMMPreset, the parametrisation built from it and
    the default guidance of the sampler. `settings` is a MethodConfig (an IMMPreset plus kind and the
    flow-matching fields)."""

    kind = ""
    group_size = 1

    def __init__(self, settings):
        self.settings = settings
        self.preset = IMMPreset(**{f.name: getattr(settings, f.name) for f in fields(IMMPreset)})

    def parametrization(self, network, null_label: Optional[int] = None) -> IMMParametrization:
        """f_{s,t} around G; the null label (guidance, label dropout) is index num_classes."""
        return self.preset.parametrization(network, null_label=null_label)

    def sampler(self, model: IMMParametrization, steps: Optional[int] = None,
                guidance: Optional[float] = None) -> IMMSampler:
        """The method's sampler at `steps` steps (None: the settings' sampling_steps), with the settings'
        guidance unless one is given."""
        return self._sampler(model, self.settings.sampling_steps if steps is None else steps,
                             self.settings.guidance if guidance is None else guidance)

    @abstractmethod
    def loss(self) -> Callable:
        """Called as loss(model, x, labels, generator) -> (loss, diagnostics)."""

    @abstractmethod
    def check(self) -> None:
        """Build what the settings describe, so that a bad one fails before training (ValueError)."""

    def for_precision(self, precision: str):
        """The settings a run at this precision trains with."""
        return self.settings

    @abstractmethod
    def _sampler(self, model, steps: int, guidance: Optional[float]) -> IMMSampler:
        """The sampler with this guidance (None: none)."""


class IMMTraining(TrainingMethod):
    kind = "imm"

    def __init__(self, settings):
        super().__init__(settings)
        self.group_size = settings.particles

    def loss(self):
        return self.preset.loss()

    def check(self) -> None:
        self.preset.loss()
        if self.preset.discretization == "custom" or self.preset.mid_eta is not None:
            self.preset.sampler(_GridProbe())

    def for_precision(self, precision: str):
        """fp16 needs the minimum t - r gap of App. I.6: a zero delta becomes FP16_MIN_GAP."""
        if precision == "fp16" and self.settings.delta == 0:
            return replace(self.settings, delta=FP16_MIN_GAP)
        return self.settings

    def _sampler(self, model, steps: int, guidance: Optional[float]) -> IMMSampler:
        return self.preset.sampler(model, steps=steps, guidance=guidance)


class FlowMatchingTraining(TrainingMethod):
    kind = "flow_matching"

    def __init__(self, settings):
        super().__init__(settings)
        self.preset = replace(self.preset, schedule="fm", f_type="euler_fm")

    def loss(self) -> FlowMatchingLoss:
        return FlowMatchingLoss(self.settings.fm_t_min, self.settings.fm_t_max, self.settings.label_dropout)

    def check(self) -> None:
        if self.settings.schedule != "fm":
            raise ValueError(f"flow matching runs on the 'fm' path, so method.schedule must be 'fm'; "
                             f"got {self.settings.schedule!r}")
        self.loss()

    def _sampler(self, model, steps: int, guidance: Optional[float]) -> IMMSampler:
        return flow_matching_sampler(model, steps, self.settings.fm_solver, eps_t=self.settings.fm_t_min,
                                     T=self.settings.fm_t_max, guidance=guidance)


TRAINING_METHODS: Dict[str, type] = {"imm": IMMTraining, "flow_matching": FlowMatchingTraining}


def training_method(settings) -> TrainingMethod:
    """The object for settings.kind ("imm" or "flow_matching")."""
    if settings.kind not in TRAINING_METHODS:
        raise ValueError(f"method.kind must be one of {', '.join(map(repr, TRAINING_METHODS))}; got {settings.kind!r}")
    return TRAINING_METHODS[settings.kind](settings)


class _GridProbe:
    """A stand-in jump model, only to let the sampler check its time grid."""

    def __call__(self, x, t, s, labels=None, guidance=None):
        return x
