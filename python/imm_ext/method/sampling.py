"""Few-step IMM sampling: the time grids of the official sampler and the two samplers of the paper
(imm-method.md §4).

- `sampling_times` builds the decreasing grid T = t_N > ... > t_0 = eps_t (§4.3): "uniform" in t,
  "edm" (rho = 7 in eta space) or "custom" intermediate eta values (CIFAR-10's 2-step eta_{t1} = 1.4).
- `IMMSampler` runs the pushforward sampler (Algorithms 2 and 4, §4.1) or the restart sampler
  (Algorithm 5, §4.2) with a one-step jump model f_{s,t}, optionally with classifier-free guidance
  (§4.4, applied inside the model).

Sampling starts from pure noise sigma_d N(0, I) at T, not at t = 1 (§4.1, §9 item 15). As in the
authors' sampler, the state and every time are float64 by default (§9 item 10); the model decides
what its network sees (IMMParametrization computes its coefficients in float64).
"""
from __future__ import annotations

from itertools import chain
from numbers import Integral
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..ops.checks import check_choice
from .arguments import check_finite_real, check_time_bounds
from .parametrization import IMMParametrization
from .schedules import NoiseSchedule, ScheduleLike, get_schedule

DISCRETIZATIONS = ("uniform", "edm", "custom")
SAMPLING_METHODS = ("pushforward", "restart")
EDM_RHO = 7.0

JumpModel = Callable[..., torch.Tensor]
Samples = Union[torch.Tensor, Tuple[torch.Tensor, List[torch.Tensor]]]


def _edm_times(steps: int, schedule: NoiseSchedule, eps_t: float, T: float) -> torch.Tensor:
    """eta_i = (eta_max^(1/rho) + i/N (eta_min^(1/rho) - eta_max^(1/rho)))^rho, mapped back to t (§4.3)."""
    if T == 1:
        raise ValueError("T must be < 1 for the 'edm' discretization: eta(1) is infinite")
    eta_max, eta_min = (float(schedule.eta(bound)) for bound in (T, eps_t))
    fraction = torch.arange(steps + 1, dtype=torch.float64) / steps
    root_max, root_min = eta_max ** (1.0 / EDM_RHO), eta_min ** (1.0 / EDM_RHO)
    times = schedule.inverse_eta((root_max + fraction * (root_min - root_max)) ** EDM_RHO)
    # The endpoints are the bounds themselves, not their round trip through eta.
    times[0], times[-1] = T, eps_t
    return times


def _custom_times(steps: int, schedule: NoiseSchedule, eps_t: float, T: float, mid_eta) -> torch.Tensor:
    """[T] + [inverse_eta(eta) for eta in mid_eta] + [eps_t] (the official sampler's `mid_nt`, §4.3)."""
    if mid_eta is None:
        raise ValueError("mid_eta must be given for the 'custom' discretization (CIFAR-10 2-step: [1.4])")
    if isinstance(mid_eta, torch.Tensor):
        mid_eta = mid_eta.tolist()
    if isinstance(mid_eta, (str, bytes)) or not isinstance(mid_eta, Sequence):
        raise TypeError(f"mid_eta must be a sequence of positive numbers; got {type(mid_eta).__name__}")
    if len(mid_eta) != steps - 1:
        raise ValueError(f"mid_eta must hold steps - 1 = {steps - 1} values; got {len(mid_eta)}")
    etas = [check_finite_real(f"mid_eta[{i}]", eta) for i, eta in enumerate(mid_eta)]
    eta_max, eta_min = float(schedule.eta(T)), float(schedule.eta(eps_t))
    if any(eta <= 0 for eta in etas):
        raise ValueError(f"mid_eta must hold positive values; got {etas}")
    if any(later >= earlier for earlier, later in zip(etas, etas[1:])):
        raise ValueError(f"mid_eta must be strictly decreasing (times run from T down to eps_t); got {etas}")
    if etas and not (eta_min < etas[-1] and etas[0] < eta_max):
        raise ValueError(f"mid_eta must lie strictly between eta(eps_t) = {eta_min:g} and eta(T) = {eta_max:g}; "
                         f"got {etas}")
    middle = schedule.inverse_eta(torch.tensor(etas, dtype=torch.float64))
    return torch.cat([torch.tensor([T], dtype=torch.float64), middle, torch.tensor([eps_t], dtype=torch.float64)])


def sampling_times(steps: int, schedule: ScheduleLike = "fm", discretization: str = "uniform", eps_t: float = 0.0,
                   T: float = 0.994, mid_eta: Optional[Sequence[float]] = None) -> torch.Tensor:
    """The steps + 1 sampling times T = t_N > ... > t_0 = eps_t, first to last, as a float64 tensor (§4.3).

    Args:
        steps: the number of sampler steps N, an integer >= 1 (NFE = N, or 2N with guidance).
        schedule: "fm" (default), "vp_cosine" or a NoiseSchedule; "edm" and "custom" work in its eta.
        discretization:
            "uniform": linspace(T, eps_t, N + 1) (the official ImageNet setting);
            "edm": eta_i = (eta_max^(1/7) + i/N (eta_min^(1/7) - eta_max^(1/7)))^7 with eta_max = eta(T)
                and eta_min = eta(eps_t), mapped back with inverse_eta; the last point is eps_t itself
                (no extra 0 appended, unlike EDM). Needs T < 1;
            "custom": [T] + [inverse_eta(eta) for eta in mid_eta] + [eps_t].
        eps_t, T: the time range, 0 <= eps_t < T <= 1; "fm": T = 0.994 with eps_t = 0 (ImageNet) or
            0.006 (CIFAR-10); "vp_cosine": T = 0.996.
        mid_eta: for "custom" only, the N - 1 intermediate noise-to-signal ratios, positive, strictly
            decreasing and strictly between eta(eps_t) and eta(T). CIFAR-10 2-step uses [1.4], giving
            t_1 = 1.4 / 2.4 under "fm".
    """
    if isinstance(steps, bool) or not isinstance(steps, Integral) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1; got {steps!r}")
    steps = int(steps)
    schedule = get_schedule(schedule)
    check_choice("discretization", discretization, DISCRETIZATIONS)
    eps_t, T = check_time_bounds(eps_t, T)
    if discretization != "custom" and mid_eta is not None:
        raise ValueError(f"mid_eta is only used by the 'custom' discretization; got discretization "
                         f"{discretization!r} with mid_eta={mid_eta!r}")
    if discretization == "uniform":
        return torch.linspace(T, eps_t, steps + 1, dtype=torch.float64)
    if discretization == "edm":
        return _edm_times(steps, schedule, eps_t, T)
    return _custom_times(steps, schedule, eps_t, T, mid_eta)


def _check_times(times) -> torch.Tensor:
    if not isinstance(times, torch.Tensor):
        if isinstance(times, (str, bytes)) or not isinstance(times, Sequence):
            raise TypeError(f"times must be a 1-D tensor or a sequence of numbers; got {type(times).__name__}")
        times = torch.tensor([check_finite_real(f"times[{i}]", time) for i, time in enumerate(times)],
                             dtype=torch.float64)
    if not times.is_floating_point():
        raise TypeError(f"times must be a floating-point tensor; got dtype {times.dtype}")
    times = times.detach().to(device="cpu", dtype=torch.float64)
    if times.dim() != 1 or times.numel() < 2:
        raise ValueError(f"times must be 1-D with at least 2 entries (steps + 1); got shape {tuple(times.shape)}")
    if not bool(torch.isfinite(times).all()) or bool((times < 0).any()) or bool((times > 1).any()):
        raise ValueError(f"times must lie in [0, 1]; got {times.tolist()}")
    if not bool((times[1:] < times[:-1]).all()):
        raise ValueError(f"times must be strictly decreasing, from T down to eps_t; got {times.tolist()}")
    return times


def _check_shape(shape) -> Tuple[int, ...]:
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence) or len(shape) == 0 or any(
            isinstance(size, bool) or not isinstance(size, Integral) or size < 1 for size in shape):
        raise ValueError(f"shape must be a non-empty sequence of positive integers, (batch size, *sample shape); "
                         f"got {shape!r}")
    return tuple(int(size) for size in shape)


def _check_labels(labels, batch_size: int, device: torch.device) -> Optional[torch.Tensor]:
    if labels is None:
        return None
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor of integer class indices; got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor; got dtype {labels.dtype}")
    if labels.shape != (batch_size,):
        raise ValueError(f"labels must have shape (B,) with B = {batch_size}, the batch size of shape; "
                         f"got shape {tuple(labels.shape)}")
    return labels.to(device)


def _random_source(generator: Optional[torch.Generator], seed: Optional[int]) -> Optional[torch.Generator]:
    """The generator to draw every noise from: `generator`, a CPU one seeded with `seed`, or None (global RNG)."""
    if generator is not None and seed is not None:
        raise ValueError("give either generator or seed, not both")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator; got {type(generator).__name__}")
        return generator
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    return torch.Generator().manual_seed(int(seed))


def _default_device(model: JumpModel) -> torch.device:
    """The device of the model's first parameter or buffer, else the CPU."""
    first = next(chain(model.parameters(), model.buffers()), None) if isinstance(model, nn.Module) else None
    return torch.device("cpu") if first is None else first.device


class IMMSampler:
    """Few-step sampler for a one-step jump model f_{s,t} (imm-method.md §4).

    Args:
        model: an IMMParametrization, or any callable `model(x_t, t, s, labels=None, guidance=None)` that
            returns f_{s,t}(x_t) shaped like x_t. The sampler passes t and s as 0-d float64 tensors on
            the state's device, and `guidance` as given here (None: no guidance).
        times: the decreasing grid T = t_N > ... > t_0 = eps_t from `sampling_times` (a 1-D tensor or
            sequence in [0, 1], at least two entries); N = len(times) - 1 steps.
        method: "pushforward" (default; Algorithms 2/4: x <- f_{t_{i-1}, t_i}(x)) or "restart"
            (Algorithm 5: x~ = f_{eps_t, t_i}(x), then x = alpha_{t_{i-1}} x~ + sigma_{t_{i-1}} n with fresh
            n ~ N(0, sigma_d^2 I) unless i = 1, where x~ is returned).
        sigma_data: sigma_d, the scale of the starting noise and of restart's fresh noise. None (default)
            takes an IMMParametrization's own sigma_data, else 0.5 (every recipe); an explicit value
            must agree with an IMMParametrization's.
        schedule: alpha_t and sigma_t for restart's re-noising. None (default) takes an
            IMMParametrization's own schedule, else "fm"; an explicit one must agree with it.
        guidance: the classifier-free guidance weight w (§4.4), a finite real, or None; the model applies
            it, so it needs labels at sampling time (and an IMMParametrization needs a null_label).
    """

    def __init__(self, model: JumpModel, times, method: str = "pushforward", sigma_data: Optional[float] = None,
                 schedule: Optional[ScheduleLike] = None, guidance: Optional[float] = None):
        if not callable(model):
            raise TypeError(f"model must be callable as model(x_t, t, s, labels=..., guidance=...); "
                            f"got {type(model).__name__}")
        self.model = model
        self.times = _check_times(times)
        self._times_on_device = self.times  # the grid on the device of the last state stepped
        self.method = check_choice("method", method, SAMPLING_METHODS)
        self.sigma_data = self._resolve_sigma_data(model, sigma_data)
        self.schedule = self._resolve_schedule(model, schedule)
        self.guidance = None if guidance is None else check_finite_real("guidance", guidance)

    @staticmethod
    def _resolve_sigma_data(model: JumpModel, sigma_data: Optional[float]) -> float:
        own = model.sigma_data if isinstance(model, IMMParametrization) else None
        if sigma_data is None:
            return 0.5 if own is None else own
        sigma_data = check_finite_real("sigma_data", sigma_data)
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be positive; got {sigma_data}")
        if own is not None and sigma_data != own:
            raise ValueError(f"sigma_data={sigma_data} disagrees with the model's sigma_data={own}")
        return sigma_data

    @staticmethod
    def _resolve_schedule(model: JumpModel, schedule: Optional[ScheduleLike]) -> NoiseSchedule:
        own = model.schedule if isinstance(model, IMMParametrization) else None
        if schedule is None:
            return get_schedule("fm") if own is None else own
        schedule = get_schedule(schedule)
        if own is not None and schedule.name != own.name:
            raise ValueError(f"schedule {schedule.name!r} disagrees with the model's schedule {own.name!r}")
        return schedule

    @property
    def steps(self) -> int:
        """The number of sampler steps N (model calls; each runs the network twice under guidance)."""
        return self.times.numel() - 1

    def sample(self, shape: Sequence[int], labels: Optional[torch.Tensor] = None,
               generator: Optional[torch.Generator] = None, seed: Optional[int] = None,
               device: Union[None, str, torch.device] = None, dtype: torch.dtype = torch.float64,
               return_trajectory: bool = False) -> Samples:
        """Draw samples of `shape` = (B, *sample shape), run under torch.inference_mode().

        Args:
            shape: the batch size followed by the shape of one sample, e.g. (B, 4, 32, 32).
            labels: integer class indices of shape (B,), or None; required with guidance.
            generator, seed: the source of every noise draw (the start and restart's fresh noise): a
                torch.Generator, or a seed for a fresh CPU generator; not both. Noise is drawn on the
                generator's device and moved to `device`, so a CPU seed gives the same noise on every
                device. Neither: the global RNG on `device`.
            device: where the state lives; None takes the model's parameter device, else the CPU.
            dtype: the floating dtype of the state, float64 by default as in the authors' sampler.
            return_trajectory: also return the list of the N states after each step; entry k is the state
                at times[k + 1] (restart: the re-noised state, and x~ after the last step), so the last
                entry is the output.

        Returns:
            The samples at eps_t, shape `shape`, dtype `dtype`, or (samples, trajectory) if asked. They are
            inference tensors (made under torch.inference_mode()).
        """
        shape = _check_shape(shape)
        device = _default_device(self.model) if device is None else torch.device(device)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch.dtype; got {dtype!r}")
        labels = _check_labels(labels, shape[0], device)
        if self.guidance is not None and labels is None:
            raise ValueError("labels must be given when guidance is set: guidance contrasts the conditional "
                             "output with the null-label output")
        source = _random_source(generator, seed)

        def noise() -> torch.Tensor:
            draw_device = device if source is None else source.device
            return torch.randn(shape, generator=source, device=draw_device, dtype=dtype).to(device)

        trajectory = []
        with torch.inference_mode():
            x = self.sigma_data * noise()
            for i in range(self.steps):
                renoise = self.method == "restart" and i < self.steps - 1
                x = self.step(x, i, labels, noise() if renoise else None)
                if return_trajectory:
                    trajectory.append(x)
        return (x, trajectory) if return_trajectory else x

    def step(self, x: torch.Tensor, i: int, labels: Optional[torch.Tensor] = None,
             noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One step of the loop `sample` runs, from x at times[i] to times[i + 1] (0 <= i < steps):
        pushforward x <- f_{t_{i+1}, t_i}(x); restart x~ = f_{eps_t, t_i}(x), re-noised to t_{i+1} with
        `noise` ~ N(0, I) shaped like x (None on the last step, which returns x~). Call it under
        torch.inference_mode() with labels checked as `sample` does; the seam for an external loop."""
        if not 0 <= i < self.steps:
            raise ValueError(f"i must lie in [0, {self.steps}) for a {self.steps}-step sampler; got {i}")
        if self._times_on_device.device != x.device:
            self._times_on_device = self.times.to(x.device)
        times = self._times_on_device
        if self.method == "pushforward":
            return self._jump(x, times[i], times[i + 1], labels)
        denoised = self._jump(x, times[i], times[-1], labels)
        if noise is None:
            if i < self.steps - 1:
                raise ValueError("restart needs fresh noise to re-noise to times[i + 1] before the last step")
            return denoised
        if i == self.steps - 1:
            raise ValueError("the last restart step returns x~ and takes no noise")
        alpha, sigma = self.schedule.alpha(times[i + 1]).to(x.dtype), self.schedule.sigma(times[i + 1]).to(x.dtype)
        return alpha * denoised + sigma * (self.sigma_data * noise.to(x.dtype))

    def _jump(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        """f_{s,t}(x) from the model, checked for shape and cast to the state's dtype."""
        output = self.model(x, t, s, labels=labels, guidance=self.guidance)
        if not isinstance(output, torch.Tensor) or output.shape != x.shape:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(f"model must return a tensor shaped like x_t {tuple(x.shape)}; got {got}")
        return output.to(x.dtype)
