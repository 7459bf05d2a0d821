"""scikit-learn's 8x8 handwritten digits (1797 images, values 0..16, 10 classes), the embedded default.

Pixels map to [-1, 1] as v / 8 - 1. The fixed split: a permutation of the 1797 indices drawn by
numpy's PCG64 generator with seed 0; its first 300 indices are "test", the other 1497 "train"
("all" is every image in the original order).
"""
from __future__ import annotations

import numpy as np
import torch

from .array_dataset import ArrayDataset

SPLITS = ("train", "test", "all")
TEST_SIZE = 300
SPLIT_SEED = 0


def split_indices(split: str, size: int = 1797) -> np.ndarray:
    if split == "all":
        return np.arange(size)
    order = np.random.Generator(np.random.PCG64(SPLIT_SEED)).permutation(size)
    return np.sort(order[:TEST_SIZE] if split == "test" else order[TEST_SIZE:])


def load_digits(path: None = None, split: str = "train") -> ArrayDataset:
    """The digits split `split`; `path` exists for the uniform loader signature and must be None."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))} for 'digits'; got {split!r}")
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    keep = split_indices(split, len(bunch.images))
    x = torch.from_numpy(bunch.images[keep]).to(torch.float32)[:, None] / 8 - 1
    labels = torch.from_numpy(bunch.target[keep]).to(torch.int64)
    return ArrayDataset(x, labels, name="digits", split=split, num_classes=10)
