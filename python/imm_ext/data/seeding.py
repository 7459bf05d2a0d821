"""Independent random streams from tuples of integers (seed, epoch, rank, ...), via numpy's SeedSequence,
so that nearby tuples give unrelated torch generator seeds."""
from __future__ import annotations

import numpy as np
import torch


def derive_seed(*values: int) -> int:
    """A 63-bit seed determined by the non-negative integers `values`."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def derived_generator(*values: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*values))


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0; got {seed!r}")
    return seed
