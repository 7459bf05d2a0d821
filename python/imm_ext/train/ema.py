"""Exponential moving average of the weights, kept for evaluation and sampling only (imm-method.md §3.8:
IMM's stop-gradient target uses the current weights, never the EMA)."""
from __future__ import annotations

import copy
from typing import Any, Dict

import torch
from torch import nn


class EMA:
    """theta_ema <- d theta_ema + (1 - d) theta after every optimiser step, with d = `decay`, or with
    `warmup` d_n = min(decay, (1 + n) / (10 + n)) at update n, so that a short run's EMA is not stuck
    near the initial weights. Buffers are copied as they are."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = False):
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1); got {decay}")
        self.decay, self.warmup, self.updates = float(decay), bool(warmup), 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        ema_parameters = [p for p in self.model.parameters()]
        parameters = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_parameters, parameters, 1.0 - decay)
        for ema_buffer, buffer in zip(self.model.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)
        self.updates += 1

    def state_dict(self) -> Dict[str, Any]:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
