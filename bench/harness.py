"""The timing protocol every benchmark here shares (bench/kernels.py, models.py, interpolant.py).

Calls are timed wall-clock with the device synchronised around each, in rounds: every round times
each call once, in a fixed order, after its untimed reset(), so that a load change on a shared machine
reaches all of them alike. Reported per call: the median and the worst time and how many were timed.
Only ratios between calls timed in one run mean anything on a machine whose speed varies.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Hashable, Optional, Tuple

import torch

import imm_ext
from imm_ext.health_check import cpu_model

Call = Callable[[], object]
KEEP_FREED_MEMORY = ("keep freed memory in the process for reuse (imm_ext.process_memory, as training does on "
                     "the CPU), for every method alike: no page faults on fresh outputs")


@dataclass
class RoundTimes:
    median_ms: float
    worst_ms: float
    count: int
    calls_ms: tuple = ()  # every timed call, in order


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(call: Call, device) -> float:
    """Seconds of one call, the device idle before and after."""
    synchronize(device)
    start = time.perf_counter()
    call()
    synchronize(device)
    return time.perf_counter() - start


def time_in_rounds(calls: Dict[Hashable, Tuple[Call, Call]], device, max_rounds: int, budget_s: float,
                   warmup: int = 0) -> Dict[Hashable, RoundTimes]:
    """{key: RoundTimes} of calls {key: (call, reset)}: `warmup` untimed rounds, then rounds until
    max_rounds or until the rounds have taken budget_s per call (at least one round)."""
    for _ in range(warmup):
        for call, reset in calls.values():
            reset()
            call()
    times = {key: [] for key in calls}
    deadline = time.perf_counter() + budget_s * len(calls)
    for _ in range(max_rounds):
        for key, (call, reset) in calls.items():
            reset()
            times[key].append(timed(call, device))
        if time.perf_counter() > deadline:
            break
    return {key: RoundTimes(1e3 * statistics.median(t), 1e3 * max(t), len(t), tuple(1e3 * v for v in t))
            for key, t in times.items()}


def load_average() -> Optional[list]:
    """1, 5 and 15 minute load averages: other work on the machine skews the timings."""
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def machine_info(device) -> dict:
    """What the numbers were measured on: CPU, GPU, threads, versions, the load at the start."""
    cuda = torch.device(device).type == "cuda"
    return dict(device=str(device), cpu=cpu_model(), gpu=torch.cuda.get_device_name() if cuda else None,
                cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(), platform=platform.platform(),
                python=platform.python_version(), torch=torch.__version__, imm_ext=imm_ext.__version__,
                build_info=imm_ext.build_info(), load_average_at_start=load_average())
