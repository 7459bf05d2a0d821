"""Datasets of encoded image files (PNG, JPEG, ...) decoded on demand with Pillow.

`ImageFileDataset` is the shared part of the image-folder and zip datasets: it decodes item i from
the bytes its subclass reads, converts it to `channels` channels, optionally centre-crops it to a
square and resizes it to `resolution`, and returns float32 (C, H, W) in [-1, 1] with its label.
"""
from __future__ import annotations

import io
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .pixels import to_unit_range

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
_PIL_MODES = {1: "L", 3: "RGB"}


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def check_image_options(channels: int, resolution: Optional[int]) -> None:
    if channels not in _PIL_MODES or isinstance(channels, bool):
        raise ValueError(f"channels must be 1 or 3; got {channels!r}")
    if resolution is not None and (isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1):
        raise ValueError(f"resolution must be a positive int or None; got {resolution!r}")


def center_crop(image, resolution: int):
    """The centre square of a PIL image, resized with Lanczos to resolution x resolution."""
    from PIL import Image

    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    return image if side == resolution else image.resize((resolution, resolution), Image.LANCZOS)


def decode_image(data: bytes, *, channels: int, resolution: Optional[int], source: str = "image") -> torch.Tensor:
    """float32 (channels, H, W) in [-1, 1]; with a resolution, centre-cropped to a square and resized
    (Lanczos) to resolution x resolution."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert(_PIL_MODES[channels])
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot decode {source}: {error}") from error
    if resolution is not None:
        image = center_crop(image, resolution)
    pixels = np.asarray(image, dtype=np.uint8).reshape(image.height, image.width, channels)
    return to_unit_range(pixels.transpose(2, 0, 1))


class ImageFileDataset(Dataset):
    """Items (x, label) decoded from `read_bytes(i)`; subclasses list the files and read them.

    Attributes: name, split, sample_shape (from the first image unless a resolution is given; an image
    of another size raises ValueError when read), num_classes (0 when unlabelled).
    """

    def __init__(self, entries: List[str], labels: Optional[List[int]], *, name: str, split: str, channels: int,
                 resolution: Optional[int], class_names: Optional[List[str]] = None):
        check_image_options(channels, resolution)
        if not entries:
            raise ValueError(f"no images found for the dataset {name!r} (extensions: {', '.join(IMAGE_EXTENSIONS)})")
        self.entries, self.channels, self.resolution = entries, channels, resolution
        self.labels = torch.tensor(labels if labels is not None else [-1] * len(entries), dtype=torch.int64)
        self.num_classes = int(self.labels.max()) + 1 if labels is not None else 0
        self.class_names = class_names
        self.name, self.split = name, split
        self.sample_shape = tuple(self._decode(0).shape)

    def read_bytes(self, index: int) -> bytes:
        raise NotImplementedError

    def _decode(self, index: int) -> torch.Tensor:
        return decode_image(self.read_bytes(index), channels=self.channels, resolution=self.resolution,
                            source=self.entries[index])

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        x = self._decode(index)
        if tuple(x.shape) != self.sample_shape:
            raise ValueError(f"{self.entries[index]} decodes to shape {tuple(x.shape)}, unlike the first image's "
                             f"{self.sample_shape}; pass resolution= to crop and resize every image")
        return x, int(self.labels[index])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, size={len(self)}, sample_shape={self.sample_shape}, "
                f"num_classes={self.num_classes})")
