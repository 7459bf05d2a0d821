"""What every model's constructor shares: checks of its size arguments and seeded initialisation."""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch

from ..ops.checks import check_int


def check_int_list(name: str, values, low: int = 1) -> list:
    """`values` as a non-empty list of ints >= low."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"{name} must be a non-empty list of ints >= {low}; got {values!r}")
    return [check_int(f"{name}[{i}]", v, low) for i, v in enumerate(values)]


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a model's construction (and so its random initialisation) from the CPU generator seeded with
    `seed`, restoring the caller's generator state afterwards: same seed, same weights, whatever the
    global RNG state."""
    check_int("seed", seed, 0)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        yield
