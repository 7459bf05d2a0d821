"""The in-memory dataset every loader that holds all of its data in RAM returns.

Items are (x, label) with x a float32 tensor of shape `sample_shape` and label an int (-1 when the
dataset has no labels). `tensors()` hands the whole data to `BatchStream`, which then indexes batches
directly instead of stacking items one by one.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch.utils.data import Dataset


class ArrayDataset(Dataset):
    """x (N, *sample_shape) float32 and labels (N,) int64 (all -1 when unlabelled), held in memory.

    Attributes: name, split, sample_shape, num_classes (0 when unlabelled).
    """

    def __init__(self, x: torch.Tensor, labels: torch.Tensor, *, name: str, split: str, num_classes: int):
        if x.dtype != torch.float32:
            raise TypeError(f"x must be float32; got {x.dtype}")
        if labels.dtype != torch.int64 or labels.shape != (len(x),):
            raise ValueError(f"labels must be an int64 tensor of shape ({len(x)},); got {labels.dtype} {tuple(labels.shape)}")
        if len(x) == 0:
            raise ValueError(f"the dataset {name!r} ({split}) is empty")
        self.x, self.labels = x.contiguous(), labels.contiguous()
        self.name, self.split, self.num_classes = name, split, num_classes
        self.sample_shape = tuple(x.shape[1:])

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        return self.x[index], int(self.labels[index])

    def tensors(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(x_all, labels_all): the data itself, not a copy."""
        return self.x, self.labels

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, size={len(self)}, "
                f"sample_shape={self.sample_shape}, num_classes={self.num_classes})")


def labels_or_unlabelled(labels, size: int) -> Tuple[torch.Tensor, int]:
    """Labels as an int64 tensor plus num_classes (max + 1); (all -1, 0) when labels is None."""
    if labels is None:
        return torch.full((size,), -1, dtype=torch.int64), 0
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or len(labels) != size:
        raise ValueError(f"labels must have shape ({size},), one per sample; got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integers; got {labels.dtype}")
    labels = labels.to(torch.int64)
    if size and int(labels.min()) < 0:
        raise ValueError(f"labels must be >= 0; got a minimum of {int(labels.min())}")
    return labels, int(labels.max()) + 1 if size else 0
