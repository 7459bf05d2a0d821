"""The EDM-style parametrisation of the one-step jump f_{s,t} around a raw network G (imm-method.md §2.1, §2.2):

    f_{s,t}(x_t) = c_skip(s, t) x_t + c_out(s, t) G(c_in(t) x_t, c t, c s | c (t - s), labels)

with c = time_scale = 1000. G is any callable `G(x, c_t, c_s, labels)` that returns a tensor shaped
like x, with c_t and c_s per-sample tensors of shape (B,).

The f-level coefficients (functions c_skip and c_out below) are the paper's g-level ones, for a
clean-sample predictor g = c_skip(t) x_t + c_out(t) G, composed with the DDIM jump of Eq. 11,
f_{s,t} = DDIM(x_t, g, s, t):

- "simple_edm": c_skip = (alpha_s alpha_t + sigma_s sigma_t) / (alpha_t^2 + sigma_t^2),
  c_out = -sigma_d (alpha_s sigma_t - sigma_s alpha_t) / sqrt(alpha_t^2 + sigma_t^2).
- "euler_fm" ("fm" schedule only): c_skip = 1, c_out = -(t - s) sigma_d.
- "identity": c_skip = sigma_s / sigma_t, c_out = alpha_s - sigma_s alpha_t / sigma_t.

The input scaling is c_in(t) = 1 / (sigma_d sqrt(alpha_t^2 + sigma_t^2)) (App. C.5; §9 item 1: the main text's
1/sqrt(alpha^2 + sigma^2/sigma_d) is a typo).

Boundary: f_{t,t}(x) = x exactly for every f_type (c_skip = 1, c_out = 0 where s == t; the spec
states it for "simple_edm" and "euler_fm", and "identity" is given the same boundary values). "identity"
divides by sigma_t, which is 0 only at t = 0; on 0 <= s <= t that leaves only s == t == 0, which is
set to the boundary values explicitly, so no NaN arises on the domain.

Classifier-free guidance (§4.4) combines raw outputs, G_w = G(null) + w (G(labels) - G(null)), with
both passes batched into one network call on 2B samples.

Every coefficient is float64 (times near T differ by about 1e-7); the network sees its inputs in
the data's dtype and the output combination is done in the data's dtype (float64 for the sampler's
float64 state).
"""
from __future__ import annotations

from numbers import Integral
from typing import Callable, Optional, Tuple

import torch
from torch import nn

from ..ops import sampler_step
from ..ops.checks import check_choice
from .arguments import TimeLike, as_float64, broadcast_to_data, check_finite_real
from .schedules import FlowMatchingSchedule, NoiseSchedule, ScheduleLike, get_schedule

F_TYPES = ("simple_edm", "euler_fm", "identity")
TIME_EMBEDDINGS = ("identity", "stride")

Network = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def _guided(conditional: torch.Tensor, unconditional: torch.Tensor, guidance: float) -> torch.Tensor:
    """G_w = G(null) + w (G(labels) - G(null)) (§4.4)."""
    return unconditional + float(guidance) * (conditional - unconditional)


def _check_f_type(f_type: str, schedule: NoiseSchedule) -> None:
    check_choice("f_type", f_type, F_TYPES)
    if f_type == "euler_fm" and not isinstance(schedule, FlowMatchingSchedule):
        raise ValueError(f"f_type 'euler_fm' is an Euler step of the OT flow-matching ODE and needs the 'fm' "
                         f"schedule; got schedule {schedule.name!r}")


def _positive_finite(name: str, value) -> float:
    value = check_finite_real(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be positive; got {value}")
    return value


def _time_pair(s: TimeLike, t: TimeLike) -> Tuple[torch.Tensor, torch.Tensor]:
    """s and t as float64 tensors of one shape and device (a 0-d time follows the other's device)."""
    s, t = as_float64(s, "s"), as_float64(t, "t")
    if s.dim() == 0:
        s = s.to(t.device)
    elif t.dim() == 0:
        t = t.to(s.device)
    try:
        return torch.broadcast_tensors(s, t)
    except RuntimeError:
        raise ValueError(f"s and t must broadcast; got shapes {tuple(s.shape)} and {tuple(t.shape)}") from None


def _skip(s: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule, f_type: str) -> torch.Tensor:
    if f_type == "euler_fm":
        return torch.ones_like(s + t)
    alpha_s, sigma_s, alpha_t, sigma_t = schedule.alpha(s), schedule.sigma(s), schedule.alpha(t), schedule.sigma(t)
    if f_type == "simple_edm":
        # Written with products so that numerator and denominator are the same float at s == t.
        return (alpha_s * alpha_t + sigma_s * sigma_t) / (alpha_t * alpha_t + sigma_t * sigma_t)
    return torch.where(s == t, torch.ones_like(sigma_t), sigma_s / sigma_t)


def _out(s: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule, f_type: str, sigma_data: float) -> torch.Tensor:
    if f_type == "euler_fm":
        return -(t - s) * sigma_data
    alpha_s, sigma_s, alpha_t, sigma_t = schedule.alpha(s), schedule.sigma(s), schedule.alpha(t), schedule.sigma(t)
    if f_type == "simple_edm":
        return -sigma_data * (alpha_s * sigma_t - sigma_s * alpha_t) / torch.sqrt(alpha_t * alpha_t + sigma_t * sigma_t)
    return torch.where(s == t, torch.zeros_like(sigma_t), alpha_s - sigma_s * alpha_t / sigma_t)


def _input_scale(t: torch.Tensor, schedule: NoiseSchedule, sigma_data: float) -> torch.Tensor:
    alpha_t, sigma_t = schedule.alpha(t), schedule.sigma(t)
    return 1.0 / (sigma_data * torch.sqrt(alpha_t * alpha_t + sigma_t * sigma_t))


def c_skip(s: TimeLike, t: TimeLike, schedule: ScheduleLike, f_type: str) -> torch.Tensor:
    """The f-level skip coefficient c_skip(s, t) of §2.1 (see the module table), float64.

    `s` and `t` broadcast against each other, with 0 <= s <= t <= 1; c_skip(t, t) = 1 for every f_type.
    "euler_fm" needs the "fm" schedule.
    """
    schedule = get_schedule(schedule)
    _check_f_type(f_type, schedule)
    return _skip(*_time_pair(s, t), schedule, f_type)


def c_out(s: TimeLike, t: TimeLike, schedule: ScheduleLike, f_type: str, sigma_data: float = 0.5) -> torch.Tensor:
    """The f-level output coefficient c_out(s, t) of §2.1 (see the module table), float64.

    `s` and `t` broadcast against each other, with 0 <= s <= t <= 1; c_out(t, t) = 0 for every f_type.
    "identity" divides by sigma_t, so it needs t > 0 wherever s < t (always true on that domain).
    `sigma_data` is the data std sigma_d (0.5 in every recipe); "identity" does not use it.
    """
    schedule = get_schedule(schedule)
    _check_f_type(f_type, schedule)
    sigma_data = _positive_finite("sigma_data", sigma_data)
    return _out(*_time_pair(s, t), schedule, f_type, sigma_data)


def c_in(t: TimeLike, schedule: ScheduleLike, sigma_data: float = 0.5) -> torch.Tensor:
    """The input scaling c_in(t) = 1 / (sigma_d sqrt(alpha_t^2 + sigma_t^2)) of §2.1 (App. C.5), float64."""
    schedule = get_schedule(schedule)
    sigma_data = _positive_finite("sigma_data", sigma_data)
    return _input_scale(as_float64(t, "t"), schedule, sigma_data)


class IMMParametrization(nn.Module):
    """f_{s,t}(x_t) = c_skip(s, t) x_t + c_out(s, t) G(c_in(t) x_t, c_noise(t), c_noise(s | t - s), labels).

    Args:
        network: G, called as `G(x, c_t, c_s, labels)` with c_t, c_s of shape (B,) and labels an integer
            tensor of shape (B,) or None; it must return a tensor shaped like x. An nn.Module is registered
            as a submodule (its parameters belong to this module).
        schedule: "fm" (default), "vp_cosine" or a NoiseSchedule.
        f_type: "euler_fm" (default; ImageNet, "fm" schedule only), "simple_edm" (CIFAR-10) or "identity".
        time_embedding: the second time input (§2.2): "identity" gives time_scale * s, "stride" gives
            time_scale * (t - s). The first input is always time_scale * t.
        time_scale: c of c_noise(t) = c t; positive and finite (1000 in the paper).
        sigma_data: the data std sigma_d; positive and finite (0.5 in every recipe).
        null_label: the label index of the unconditional ("null") class, needed for guidance; a
            non-negative integer or None.
    """

    def __init__(self, network: Network, schedule: ScheduleLike = "fm", f_type: str = "euler_fm",
                 time_embedding: str = "identity", time_scale: float = 1000.0, sigma_data: float = 0.5,
                 null_label: Optional[int] = None):
        super().__init__()
        if not callable(network):
            raise TypeError(f"network must be callable; got {type(network).__name__}")
        self.schedule = get_schedule(schedule)
        _check_f_type(f_type, self.schedule)
        self.f_type = f_type
        self.time_embedding = check_choice("time_embedding", time_embedding, TIME_EMBEDDINGS)
        self.time_scale = _positive_finite("time_scale", time_scale)
        self.sigma_data = _positive_finite("sigma_data", sigma_data)
        if null_label is not None and (isinstance(null_label, bool) or not isinstance(null_label, Integral)
                                       or null_label < 0):
            raise ValueError(f"null_label must be None or a non-negative integer label index; got {null_label!r}")
        self.null_label = None if null_label is None else int(null_label)
        self.network = network

    def extra_repr(self) -> str:
        return (f"schedule={self.schedule.name!r}, f_type={self.f_type!r}, time_embedding={self.time_embedding!r}, "
                f"time_scale={self.time_scale}, sigma_data={self.sigma_data}, null_label={self.null_label}")

    def forward(self, x_t: torch.Tensor, t: TimeLike, s: TimeLike, labels: Optional[torch.Tensor] = None,
                guidance: Optional[float] = None) -> torch.Tensor:
        """f_{s,t}(x_t), the jump from time t to time s <= t, in x_t's dtype (§2.1).

        `t` and `s` are scalars or shape (B,) for x_t of shape (B, ...), with 0 <= s <= t <= 1; where
        s == t the result is x_t exactly. With `guidance` = w, G is replaced by the guided output
        G_w = G(null) + w (G(labels) - G(null)) of §4.4 (see `raw_output`).
        """
        t_data, s_data = self._times(x_t, t, s)
        g_cond, g_uncond = self._outputs(x_t, t_data, s_data, labels, guidance)
        skip = _skip(s_data, t_data, self.schedule, self.f_type)
        out = _out(s_data, t_data, self.schedule, self.f_type, self.sigma_data)
        if not torch.is_grad_enabled():
            # Sampling and the loss's target pass: one fused pass with guidance folded in, float64
            # accumulation for a float64 state (imm_ext.ops.sampler_step).
            batch = x_t.shape[0]
            per_sample = lambda c: c.reshape(-1).expand(batch).contiguous()
            return sampler_step(x_t, g_cond, per_sample(skip), per_sample(out), g_uncond, guidance)
        raw = g_cond if g_uncond is None else _guided(g_cond, g_uncond, guidance)
        return skip.to(x_t.dtype) * x_t + out.to(x_t.dtype) * raw.to(x_t.dtype)

    def raw_output(self, x_t: torch.Tensor, t: TimeLike, s: TimeLike, labels: Optional[torch.Tensor] = None,
                   guidance: Optional[float] = None) -> torch.Tensor:
        """G(c_in(t) x_t, c_noise(t), c_noise(s | t - s), labels), in the network's output dtype.

        With `guidance` = w (a finite real), returns G_w = G(null) + w (G(labels) - G(null)) (§4.4): the
        network runs once on 2B samples, the B labels followed by B copies of `null_label`. Guidance
        needs `labels` and a `null_label`; w = 1 is the conditional output (still two passes' cost).
        """
        t_data, s_data = self._times(x_t, t, s)
        g_cond, g_uncond = self._outputs(x_t, t_data, s_data, labels, guidance)
        return g_cond if g_uncond is None else _guided(g_cond, g_uncond, guidance)

    def _times(self, x_t: torch.Tensor, t: TimeLike, s: TimeLike) -> Tuple[torch.Tensor, torch.Tensor]:
        """t and s as float64, broadcastable against x_t (shape (B, 1, ..., 1) or 0-d)."""
        if not isinstance(x_t, torch.Tensor):
            raise TypeError(f"x_t must be a torch.Tensor; got {type(x_t).__name__}")
        if not x_t.is_floating_point():
            raise TypeError(f"x_t must be a floating-point tensor; got dtype {x_t.dtype}")
        if x_t.dim() == 0:
            raise ValueError("x_t must have a batch dimension, shape (B, ...); got a 0-d tensor")
        return broadcast_to_data(t, x_t, "t"), broadcast_to_data(s, x_t, "s")

    def _outputs(self, x_t: torch.Tensor, t_data: torch.Tensor, s_data: torch.Tensor,
                 labels: Optional[torch.Tensor], guidance: Optional[float]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(G(labels), None), or with guidance (G(labels), G(null)) from one network call on 2B samples."""
        if labels is not None:
            self._check_labels(labels, x_t)
        network_x, c_t, c_s = self._network_inputs(x_t, t_data, s_data)
        if guidance is None:
            return self._call_network(network_x, c_t, c_s, labels), None
        check_finite_real("guidance", guidance)
        if labels is None:
            raise ValueError("labels must be given when guidance is requested: guidance contrasts the "
                             "conditional output with the null-label output")
        if self.null_label is None:
            raise ValueError("guidance needs the null label: construct IMMParametrization with null_label "
                             "set to the index of the unconditional class")
        both = self._call_network(torch.cat([network_x, network_x]), torch.cat([c_t, c_t]), torch.cat([c_s, c_s]),
                                  torch.cat([labels, torch.full_like(labels, self.null_label)]))
        conditional, unconditional = both.chunk(2)
        return conditional, unconditional

    def _network_dtype(self, fallback: torch.dtype) -> torch.dtype:
        parameters = self.network.parameters() if isinstance(self.network, nn.Module) else ()
        for parameter in parameters:
            if parameter.is_floating_point():
                return parameter.dtype
        return fallback

    def _network_inputs(self, x_t: torch.Tensor, t_data: torch.Tensor,
                        s_data: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """c_in(t) x_t, and the (B,) time inputs c t and c s | c (t - s) of §2.2, in the network's dtype.

        The network's dtype is that of its first floating-point parameter (x_t's dtype for a
        parameter-free callable), so a float32 network serves the sampler's float64 state (§2.3:
        the authors' wrapper casts network inputs to float32). Time inputs are at least float32:
        half precision cannot tell 1000 t apart from its neighbours (float16 spacing near 1000 is 0.5).
        """
        batch = x_t.shape[0]
        dtype = self._network_dtype(x_t.dtype)
        network_x = (_input_scale(t_data, self.schedule, self.sigma_data) * x_t).to(dtype)
        time_dtype = torch.promote_types(dtype, torch.float32)
        second = s_data if self.time_embedding == "identity" else t_data - s_data
        c_t = (self.time_scale * t_data).reshape(-1).expand(batch).to(time_dtype)
        c_s = (self.time_scale * second).reshape(-1).expand(batch).to(time_dtype)
        return network_x, c_t, c_s

    def _call_network(self, network_x: torch.Tensor, c_t: torch.Tensor, c_s: torch.Tensor,
                      labels: Optional[torch.Tensor]) -> torch.Tensor:
        output = self.network(network_x, c_t, c_s, labels)
        if not isinstance(output, torch.Tensor) or output.shape != network_x.shape:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(f"network must return a tensor shaped like its input {tuple(network_x.shape)}; "
                             f"got {got}")
        return output

    @staticmethod
    def _check_labels(labels: torch.Tensor, x_t: torch.Tensor) -> None:
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"labels must be a torch.Tensor of integer class indices; got {type(labels).__name__}")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(f"labels must be an integer tensor; got dtype {labels.dtype}")
        if labels.shape != (x_t.shape[0],):
            raise ValueError(f"labels must have shape (B,) with B = {x_t.shape[0]}, x_t's batch size; "
                             f"got shape {tuple(labels.shape)}")
