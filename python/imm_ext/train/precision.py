"""Numerical precision of training (imm-method.md §5.2): fp32, tf32 (fp32 storage with TensorFloat-32
matmuls on CUDA; the paper's default), bf16 or fp16 autocast of the network.

The network alone runs under autocast (as the authors' IMMPrecond does); its output is cast back to
float32, so the parametrisation's coefficients, the MMD and the sampler keep float32/float64. fp16
needs a gradient scaler (the IMM loss is about 1e-3 to 1e-2) and a minimum t - r gap (App. I.6,
applied by the config); bf16 cannot separate nearby t and r and is not recommended by the paper.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import nn

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class AutocastNetwork(nn.Module):
    """Runs `network(x, c_t, c_s, labels)` under torch.autocast(`dtype`) and returns float32."""

    def __init__(self, network: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.network, self.dtype = network, dtype

    def forward(self, x: torch.Tensor, c_t: torch.Tensor, c_s: torch.Tensor,
                labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, dtype=self.dtype):
            output = self.network(x, c_t, c_s, labels)
        return output.float()


def configure_precision(precision: str, device: torch.device) -> None:
    """Turn TF32 matmuls on for "tf32" and off otherwise (CUDA only); warn about bf16."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = precision == "tf32"
    if precision == "bf16":
        warnings.warn("bf16 cannot separate nearby times t and r near T (imm-method.md §5.2); the paper "
                      "recommends fp16 with a minimum gap, or tf32", stacklevel=2)


def wrap_network(network: nn.Module, precision: str) -> nn.Module:
    """The network as the parametrisation should call it under `precision`."""
    return AutocastNetwork(network, AUTOCAST_DTYPES[precision]) if precision in AUTOCAST_DTYPES else network


def grad_scaler(precision: str, device: torch.device) -> Optional[torch.amp.GradScaler]:
    """A GradScaler for fp16 (None otherwise)."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None
