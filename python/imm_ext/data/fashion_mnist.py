"""Fashion-MNIST from the four gzipped IDX files of the Debian package dataset-fashion-mnist
(60,000 train + 10,000 test 28x28 grey images, 10 classes), read with gzip and numpy.

IDX: two zero bytes, a dtype byte (0x08 = uint8), a rank byte, one big-endian uint32 per dimension,
then the data in C order. `pad=True` pads to 32x32 with the background value -1.
"""
from __future__ import annotations

import gzip
import os
from typing import Optional

import numpy as np
import torch

from .array_dataset import ArrayDataset
from .pixels import to_unit_range

DEFAULT_PATH = "/usr/share/datasets/fashion-mnist"
SPLITS = ("train", "test")
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(data: bytes, source: str = "IDX data") -> np.ndarray:
    """Parse an (uncompressed) IDX file into a numpy array."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{source} is not an IDX file (bad magic number)")
    dtype, rank = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * rank
    if len(data) < header:
        raise ValueError(f"{source} is truncated (header)")
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=rank, offset=4))
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) != header + count * dtype.itemsize:
        raise ValueError(f"{source} holds {len(data) - header} data bytes; its header {shape} needs {count * dtype.itemsize}")
    return np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(shape)


def _read_gz_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as file:
        return read_idx(file.read(), path)


def load_fashion_mnist(path: Optional[str] = None, split: str = "train", *, pad: bool = False) -> ArrayDataset:
    """The Fashion-MNIST split from the IDX files in `path` (default: the Debian package's folder)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))} for 'fashion-mnist'; got {split!r}")
    if not isinstance(pad, bool):
        raise TypeError(f"pad must be a bool; got {type(pad).__name__}")
    directory = DEFAULT_PATH if path is None else os.fspath(path)
    image_path, label_path = (os.path.join(directory, f) for f in _FILES[split])
    for file in (image_path, label_path):
        if not os.path.isfile(file):
            raise FileNotFoundError(f"Fashion-MNIST file not found: {file}. Install the Debian package "
                                    f"(`apt-get install dataset-fashion-mnist`, files in {DEFAULT_PATH}) or pass "
                                    f"path= to a folder holding the four gzipped IDX files")
    images, labels = _read_gz_idx(image_path), _read_gz_idx(label_path)
    if images.ndim != 3 or labels.shape != (len(images),):
        raise ValueError(f"unexpected Fashion-MNIST shapes: images {images.shape}, labels {labels.shape}")
    x = to_unit_range(images)[:, None]
    if pad:
        x = torch.nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)
    return ArrayDataset(x, torch.from_numpy(labels.astype(np.int64)), name="fashion-mnist", split=split, num_classes=10)
