"""Exponential moving average of the weights, kept for evaluation and sampling only (imm-method.md §3.8:
IMM's stop-gradient target uses the current weights, never the EMA)."""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional

import torch
from torch import nn


class EMA:
    """theta_ema <- d theta_ema + (1 - d) theta after every optimiser step, with d = `decay`, or with
    `warmup` d_n = min(decay, (1 + n) / (10 + n)) at update n, so that a short run's EMA is not stuck
    near the initial weights. Buffers are copied as they are. The update count lives on the device and
    an update can be skipped by a device flag (step_guard.py), so that updating never waits for the
    host."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = False):
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1); got {decay}")
        self.decay, self.warmup = float(decay), bool(warmup)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        device = next(self.model.parameters()).device
        self.updates = torch.zeros((), dtype=torch.float64, device=device)

    def current_decay(self) -> torch.Tensor:
        """d of the next update (float64, on the device)."""
        if not self.warmup:
            return torch.full_like(self.updates, self.decay)
        return torch.clamp((1 + self.updates) / (10 + self.updates), max=self.decay)

    @torch.no_grad()
    def update(self, model: nn.Module, skip: Optional[torch.Tensor] = None) -> None:
        """One update from `model`'s weights, or none where the 0-d flag `skip` is 1."""
        keep = 1.0 if skip is None else 1.0 - skip.double()
        weight = (1.0 - self.current_decay()) * keep
        ema_parameters = list(self.model.parameters())
        weights_by_dtype = {p.dtype: weight.to(p.dtype) for p in ema_parameters}
        torch._foreach_lerp_(ema_parameters, [p.detach() for p in model.parameters()],
                             [weights_by_dtype[p.dtype] for p in ema_parameters])
        for ema_buffer, buffer in zip(self.model.buffers(), model.buffers()):
            ema_buffer.copy_(buffer if skip is None else torch.where(skip.bool(), ema_buffer, buffer))
        self.updates += keep

    def state_dict(self) -> Dict[str, Any]:
        return {"model": self.model.state_dict(), "updates": int(self.updates.item())}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates.fill_(int(state["updates"]))
