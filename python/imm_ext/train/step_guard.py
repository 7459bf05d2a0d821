"""The non-finite guard of a training step, kept on the device: no host-device synchronisation per step.

A step is skipped when its loss or its gradient norm is not finite on any rank. The verdict stays a 0/1
tensor: the optimiser step and the EMA update take it and leave the weights, the optimiser state and the
EMA exactly as they were where it is 1. The counters (skipped steps, the current non-finite streak, the
loss summed since the last log line) live on the device too, and the loop reads them back on logged and
checkpoint steps only. With a GradScaler an overflowing gradient skips its step as well but does not
count toward a streak (the scaler lowers its scale and the next step retries).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from . import distributed

COUNTERS = ("skipped_total", "consecutive_nonfinite", "loss_sum", "loss_count")


class StepGuard:
    """The device-side verdict of each step and the counters it keeps."""

    def __init__(self, device: torch.device, counts_overflow_as_streak: bool):
        self.counts_overflow_as_streak = counts_overflow_as_streak
        self.values = torch.zeros(len(COUNTERS), dtype=torch.float64, device=device)

    def verdict(self, context, loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
        """The 0/1 skip flag (float32, 0-d) of this step, the same on every rank; updates the counters."""
        local = torch.stack([(~torch.isfinite(loss)).double(), (~torch.isfinite(grad_norm)).double(),
                             loss.detach().double()])
        summed = distributed.sum_on_device(context, local)
        bad_loss, bad_grad = summed[0] > 0, summed[1] > 0
        skip = bad_loss | bad_grad
        in_streak = skip if self.counts_overflow_as_streak else bad_loss
        skipped, streak, loss_sum, loss_count = self.values.unbind()
        loss_finite = torch.isfinite(summed[2])
        mean_loss = summed[2] / context.world_size
        self.values = torch.stack([
            skipped + skip.double(),
            torch.where(in_streak, streak + 1, torch.zeros_like(streak)),
            loss_sum + torch.where(loss_finite, mean_loss, torch.zeros_like(mean_loss)),
            loss_count + loss_finite.double()])
        return skip.float()

    def read(self, extra: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, float]:
        """The counters, and the given scalar tensors, on the host (one transfer: a synchronisation)."""
        extra = extra or {}
        values = torch.cat([self.values, *(value.detach().double().reshape(1).to(self.values.device)
                                           for value in extra.values())]).tolist()
        return dict(zip((*COUNTERS, *extra), values))

    def start_interval(self) -> None:
        """A log line was written: the next one averages the losses from here."""
        self.values[2:].zero_()

    def state_dict(self) -> Dict[str, float]:
        counts = self.read()
        return {"skipped_total": int(counts["skipped_total"]), "consecutive_nonfinite": int(counts["consecutive_nonfinite"]),
                "loss_sum": counts["loss_sum"], "loss_count": int(counts["loss_count"])}

    def load_state_dict(self, counters: Dict[str, float], interval_losses=None) -> None:
        """From a checkpoint's counters (older checkpoints keep the interval's losses as a list)."""
        if interval_losses is not None:
            counters = {**counters, "loss_sum": sum(float(v) for v in interval_losses),
                        "loss_count": len(interval_losses)}
        self.values = torch.tensor([float(counters[name]) for name in COUNTERS], dtype=torch.float64,
                                   device=self.values.device)


def optimizer_step_unless(optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """optimizer.step(), or no change at all to the parameters and the optimiser state where `skip` (0-d,
    0 or 1, on the parameters' device) is 1, without reading `skip` on the host.

    Fused Adam / AdamW take the flag as their `found_inf` (the kernel returns early and the step count
    is put back). Other optimisers step, then every tensor they touched is put back where `skip` is 1;
    state created by a skipped first step is reset to zeros, the fresh state of the Adam family (RAdam)."""
    groups = optimizer.param_groups
    if all(group.get("fused") for group in groups):
        optimizer.found_inf = skip
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
        return
    parameters = [p for group in groups for p in group["params"] if p.grad is not None]
    before = {id(t): t.clone() for p in parameters
              for t in (p, *(v for v in optimizer.state.get(p, {}).values() if isinstance(v, torch.Tensor)))}
    optimizer.step()
    keep_old = skip.bool()
    with torch.no_grad():
        for p in parameters:
            for t in (p, *(v for v in optimizer.state[p].values() if isinstance(v, torch.Tensor))):
                old = before.get(id(t))
                t.copy_(torch.where(keep_old.to(t.device), old if old is not None else torch.zeros_like(t), t))
