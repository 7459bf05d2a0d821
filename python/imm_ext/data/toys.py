"""The 2-D toys as datasets: a fixed sample of n points drawn from `toy2d` (unlabelled).

The "train" and "test" splits are independent samples from the streams (seed, 0) and (seed, 1).
"""
from __future__ import annotations

import torch

from . import toy2d
from .array_dataset import ArrayDataset, labels_or_unlabelled
from .seeding import check_seed, derived_generator

SPLITS = ("train", "test")


def load_toy(name: str, path: None = None, split: str = "train", *, n: int = 100_000, seed: int = 0,
             std=0.5) -> ArrayDataset:
    """n points of the toy `name` (`path` exists for the uniform loader signature and must be None)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))} for the toy {name!r}; got {split!r}")
    generator = derived_generator(check_seed(seed), SPLITS.index(split))
    x = toy2d.sample(name, n, generator, std=std, dtype=torch.float32)
    labels, num_classes = labels_or_unlabelled(None, n)
    return ArrayDataset(x, labels, name=name, split=split, num_classes=num_classes)
