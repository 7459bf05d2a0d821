"""What every model's constructor shares: checks of its size arguments and seeded initialisation."""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch


def check_int(name: str, value, low: int = 1) -> int:
    """`value` if it is an int >= low (bool excluded), else a ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}; got {value!r}")
    return value


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
    check_int("seed", seed, low=0)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        yield
