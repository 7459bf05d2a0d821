"""A directory of image files: one subfolder per class (sorted names -> labels 0, 1, ...), or a flat
folder of images (unlabelled). Subfolders are searched recursively; files are read when used."""
from __future__ import annotations

import os
from typing import Optional

from .image_files import ImageFileDataset, is_image_name


def _images_under(root: str) -> list:
    found = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories.sort()
        found.extend(os.path.join(directory, f) for f in sorted(files) if is_image_name(f))
    return found


class ImageFolderDataset(ImageFileDataset):
    def __init__(self, path: str, split: str = "train", *, channels: int = 3, resolution: Optional[int] = None):
        if not os.path.isdir(path):
            raise FileNotFoundError(f"image folder not found: {path!r}")
        top_images = sorted(f for f in os.listdir(path) if is_image_name(f) and os.path.isfile(os.path.join(path, f)))
        class_names = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
        class_files = {c: _images_under(os.path.join(path, c)) for c in class_names}
        class_names = [c for c in class_names if class_files[c]]
        if top_images and class_names:
            raise ValueError(f"{path!r} holds both images and class subfolders with images; use one layout: "
                             f"a flat folder of images (unlabelled) or one subfolder per class")
        if class_names:
            entries = [f for c in class_names for f in class_files[c]]
            labels = [label for label, c in enumerate(class_names) for _ in class_files[c]]
        else:
            entries, labels = [os.path.join(path, f) for f in top_images], None
        super().__init__(entries, labels, name="folder", split=split, channels=channels, resolution=resolution,
                         class_names=class_names or None)

    def read_bytes(self, index: int) -> bytes:
        with open(self.entries[index], "rb") as file:
            return file.read()
