"""Checks of a model's forward inputs (x, c_t, c_s, labels), shared by every network G(x, c_t, c_s, labels)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..ops.checks import require_all


def check_model_inputs(x: torch.Tensor, c_t: torch.Tensor, c_s: torch.Tensor, labels: Optional[torch.Tensor],
                       data_shape: Tuple[int, ...], num_classes: int) -> None:
    """Raise a ValueError/TypeError naming the argument unless x has shape (B, *data_shape), c_t and c_s
    are floating-point tensors of shape (B,), and labels is None for an unconditional model (num_classes = 0) or
    an integer tensor of shape (B,) with values in [0, num_classes] (num_classes is the null class)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"x must be a floating-point tensor; got {got}")
    if x.dim() != 1 + len(data_shape) or tuple(x.shape[1:]) != tuple(data_shape):
        expected = ", ".join(["B"] + [str(d) for d in data_shape])
        raise ValueError(f"x must have shape ({expected}); got {tuple(x.shape)}")
    batch = x.shape[0]
    for name, c in (("c_t", c_t), ("c_s", c_s)):
        if not isinstance(c, torch.Tensor) or not c.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor of shape (B,)")
        if c.shape != (batch,):
            raise ValueError(f"{name} must have shape (B,) with B = {batch}, x's batch size; got {tuple(c.shape)}")
    if num_classes == 0:
        if labels is not None:
            raise ValueError("labels were given to an unconditional model (num_classes = 0)")
        return
    if labels is None:
        raise ValueError(f"labels must be given to a class-conditional model (use the null class {num_classes} "
                         "for unconditional samples)")
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int32, torch.int64):
        raise TypeError("labels must be an int32 or int64 tensor of class indices")
    if labels.shape != (batch,):
        raise ValueError(f"labels must have shape (B,) with B = {batch}, x's batch size; got {tuple(labels.shape)}")
    require_all((labels >= 0) & (labels <= num_classes),
                f"labels must lie in [0, {num_classes}] ({num_classes} is the null class)")
