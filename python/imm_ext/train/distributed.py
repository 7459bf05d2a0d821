"""Process-group setup for `torchrun` (single- or multi-node) and the few collectives the loop needs:
the step's verdict is summed on the device, host flags (a stop) through a CPU group.

    torchrun --nproc_per_node 8 -m imm_ext.cli train --preset imagenet256-latent-XL data.path=latents.npz
    torchrun --nnodes 2 --node_rank 0 --rdzv_backend c10d --rdzv_endpoint HOST:29500 --nproc_per_node 8 \
        -m imm_ext.cli train ...

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them the run is a single process. The backend is
NCCL on CUDA and gloo on the CPU. Every collective has the configured timeout, so a rank that dies
makes its peers fail with an error naming the collective, not hang; `shutdown` always destroys the
process group.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, List

import torch
import torch.distributed as dist


class PeerFailure(RuntimeError):
    """A collective failed or timed out: another rank has most likely died."""


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    host_group: Any = None  # the gloo group for host values (the default group on CPU runs)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _environment_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer; got {value!r}") from None


def choose_device(preference: str, local_rank: int = 0) -> torch.device:
    """"cuda" (fails without a GPU), "cpu", or "auto" (CUDA when available); one GPU per local rank."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but no CUDA device is available")
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices are visible")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def initialize(device_preference: str, timeout_s: float) -> DistributedContext:
    """Join the torchrun process group when RANK / WORLD_SIZE are set; otherwise a single-process context."""
    world_size = _environment_int("WORLD_SIZE", 1)
    rank, local_rank = _environment_int("RANK", 0), _environment_int("LOCAL_RANK", 0)
    device = choose_device(device_preference, local_rank)
    if world_size == 1:
        return DistributedContext(device=device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(backend=backend, timeout=timeout, **({"device_id": device} if device.type == "cuda" else {}))
    host_group = dist.new_group(backend="gloo", timeout=timeout) if backend == "nccl" else None
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device,
                              host_group=host_group)


def shutdown(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def _collective(name: str, function, *arguments):
    try:
        return function(*arguments)
    except Exception as error:
        raise PeerFailure(f"the collective {name} failed ({type(error).__name__}: {error}); another rank has "
                          f"probably died or stopped responding: see its log") from None


def sum_on_device(context: DistributedContext, values: torch.Tensor) -> torch.Tensor:
    """Elementwise sum over all ranks of a small tensor on this rank's device, left on the device (the
    host does not wait for it); the tensor itself on one process."""
    if not context.enabled:
        return values
    values = values.clone()
    _collective("all_reduce", dist.all_reduce, values)
    return values


def any_rank(context: DistributedContext, flag: bool) -> bool:
    """Whether `flag` is true on any rank: a host value agreed through the CPU (gloo) group, so that no
    device stream waits for it."""
    if not context.enabled:
        return flag
    values = torch.tensor([float(flag)], dtype=torch.float64)
    _collective("all_reduce", dist.all_reduce, values, dist.ReduceOp.SUM, context.host_group)
    return bool(values[0] > 0)


def gather_objects(context: DistributedContext, value: Any) -> List[Any]:
    """[value of rank 0, value of rank 1, ...] on every rank (values made by this program only)."""
    if not context.enabled:
        return [value]
    gathered: List[Any] = [None] * context.world_size
    _collective("all_gather_object", dist.all_gather_object, gathered, value)
    return gathered


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        _collective("barrier", dist.barrier)
