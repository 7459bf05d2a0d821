"""Images stored as numpy arrays: a .npy file, or a .npz archive with the images under one key and
optional integer labels under "labels".

Shapes (N, H, W), (N, C, H, W) or (N, H, W, C) (see `pixels.to_nchw`), uint8 (0..255) or floating
(taken as [-1, 1] unless value_range says otherwise). Everything is loaded into memory.
"""
from __future__ import annotations

import os
import zipfile
from typing import Optional, Sequence, Tuple

import numpy as np

from .array_dataset import ArrayDataset, labels_or_unlabelled
from .pixels import to_nchw, to_unit_range

LABELS_KEY = "labels"


def read_array_file(path: str, key: Optional[str] = None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(data, labels or None) from a .npy file or a .npz archive. In a .npz the data is `key`, or the one
    array not named "labels" when key is None."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"array file not found: {path!r}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        raise ValueError(f"cannot read {path!r} as .npy or .npz: {error}") from error
    if isinstance(loaded, np.ndarray):
        if key is not None:
            raise ValueError(f"key={key!r} applies to .npz archives; {path!r} is a single .npy array")
        return loaded, None
    with loaded:
        names = list(loaded.files)
        if key is None:
            candidates = [n for n in names if n != LABELS_KEY]
            if len(candidates) != 1:
                raise ValueError(f"{path!r} holds arrays {names}; pass key= to choose the data array")
            key = candidates[0]
        if key not in names:
            raise ValueError(f"key {key!r} not in {path!r}; it holds {names}")
        return loaded[key], (loaded[LABELS_KEY] if LABELS_KEY in names else None)


def load_image_arrays(path: str, split: str = "train", *, name: str = "npz", key: Optional[str] = None,
                      layout: Optional[str] = None, value_range: Optional[Sequence[float]] = None) -> ArrayDataset:
    images, labels = read_array_file(path, key)
    x = to_unit_range(to_nchw(images, layout), value_range)
    labels, num_classes = labels_or_unlabelled(labels, len(x))
    return ArrayDataset(x, labels, name=name, split=split, num_classes=num_classes)
