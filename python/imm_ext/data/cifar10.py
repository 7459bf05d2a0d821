"""The official CIFAR-10 archives, read without running anything from them.

Two formats, as a .tar.gz or extracted to a folder (the files may sit in a sub-folder):
- binary (`cifar-10-binary.tar.gz`): data_batch_1.bin .. data_batch_5.bin and test_batch.bin, each
  10000 records of 1 label byte and 3072 pixel bytes (1024 red, 1024 green, 1024 blue, rows of 32);
  batches.meta.txt, the class names one per line;
- python (`cifar-10-python.tar.gz`): data_batch_1 .. data_batch_5 and test_batch, each a pickled dict
  {b"data": uint8 array (10000, 3072), b"labels": [int]}; batches.meta holds b"label_names". They are
  read through a restricted unpickler that admits numpy arrays and plain containers only.

`read_cifar10(path, split)` returns uint8 images (N, 32, 32, 3), int64 labels (N,) and the class names.
"""
from __future__ import annotations

import os
import tarfile
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..restricted_pickle import numpy_array_globals, restricted_loads

SPLITS = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
RECORD = 1 + 3 * 32 * 32
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _members(path: str) -> Dict[str, bytes]:
    """{base file name: bytes} of the archive's or folder's files named like CIFAR-10's."""
    wanted = {name for names in SPLITS.values() for name in names}
    wanted |= {f"{name}.bin" for name in wanted} | {"batches.meta", "batches.meta.txt"}
    found: Dict[str, bytes] = {}
    if os.path.isdir(path):
        for directory, subdirectories, files in os.walk(path):
            subdirectories.sort()
            for name in sorted(files):
                if name in wanted and name not in found:
                    with open(os.path.join(directory, name), "rb") as handle:
                        found[name] = handle.read()
        return found
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CIFAR-10 archive or folder not found: {path!r}")
    try:
        with tarfile.open(path) as archive:
            for member in archive.getmembers():
                name = os.path.basename(member.name)
                if member.isfile() and name in wanted and name not in found:
                    found[name] = archive.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as error:
        raise ValueError(f"{path!r} is not a readable CIFAR-10 tar archive ({error})") from None
    return found


def _binary_batch(data: bytes, source: str) -> Tuple[np.ndarray, np.ndarray]:
    if not data or len(data) % RECORD:
        raise ValueError(f"{source}: {len(data)} bytes is not a whole number of {RECORD}-byte CIFAR-10 records")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), records[:, 0].astype(np.int64)


def _python_batch(data: bytes, source: str) -> Tuple[np.ndarray, np.ndarray]:
    batch = restricted_loads(data, numpy_array_globals(), source=source, encoding="bytes")
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{source}: expected a dict with b'data' and b'labels'")
    pixels, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != 3072:
        raise ValueError(f"{source}: b'data' must be a uint8 array (N, 3072); got "
                         f"{getattr(pixels, 'dtype', type(pixels).__name__)} {getattr(pixels, 'shape', '')}")
    if not isinstance(labels, list) or len(labels) != len(pixels) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in labels):
        raise ValueError(f"{source}: b'labels' must be a list of {len(pixels)} ints")
    return pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(labels, dtype=np.int64)


def _class_names(found: Dict[str, bytes], source: str) -> List[str]:
    if "batches.meta.txt" in found:
        names = [line.strip() for line in found["batches.meta.txt"].decode("utf-8", "replace").splitlines()]
        names = [name for name in names if name]
    elif "batches.meta" in found:
        meta = restricted_loads(found["batches.meta"], numpy_array_globals(), source=f"{source}: batches.meta",
                                encoding="bytes")
        raw = meta.get(b"label_names") if isinstance(meta, dict) else None
        names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in raw or []]
    else:
        names = []
    return names if len(names) == len(CLASS_NAMES) else list(CLASS_NAMES)


def read_cifar10(path: str, split: str = "train") -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """(images uint8 (N, 32, 32, 3), labels int64 (N,), class names) of one split ("train": the 50000
    of data_batch_1..5, "test": the 10000 of test_batch) from either official archive format."""
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    path = os.fspath(path)
    found = _members(path)
    images, labels = [], []
    fmt: Optional[str] = None
    for name in SPLITS[split]:
        if f"{name}.bin" in found:
            fmt, batch = "binary", _binary_batch(found[f"{name}.bin"], f"{path}: {name}.bin")
        elif name in found:
            fmt, batch = "python", _python_batch(found[name], f"{path}: {name}")
        else:
            raise ValueError(f"{path!r} has no {name} or {name}.bin: not a CIFAR-10 archive (binary or python "
                             f"version), or the {split} split is missing")
        images.append(batch[0])
        labels.append(batch[1])
    labels = np.concatenate(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        raise ValueError(f"{path!r} ({fmt} version): labels must lie in 0..9; found {labels.min()}..{labels.max()}")
    return np.ascontiguousarray(np.concatenate(images)), labels, _class_names(found, path)
