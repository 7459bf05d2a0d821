"""An EDM-style zip archive of images, optionally with a `dataset.json` of labels:
{"labels": [["00000/img00000000.png", 6], ...]} (or "labels": null for an unlabelled archive).
Every image in the archive (any folder, sorted by name) is an item; with labels, each needs one."""
from __future__ import annotations

import json
import os
import zipfile
from typing import Optional

from .image_files import ImageFileDataset, is_image_name


class ImageZipDataset(ImageFileDataset):
    def __init__(self, path: str, split: str = "train", *, channels: int = 3, resolution: Optional[int] = None):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"zip archive not found: {path!r}")
        self.path, self._archive, self._archive_pid = path, None, None
        try:
            names = self._zip().namelist()
        except zipfile.BadZipFile as error:
            raise ValueError(f"{path!r} is not a zip archive: {error}") from error
        entries = sorted(n for n in names if is_image_name(n))
        labels = None
        if "dataset.json" in names:
            table = _label_table(self._zip().read("dataset.json"), path)
            if table is not None:
                by_name = {str(fname): label for fname, label in table}
                missing = [n for n in entries if n not in by_name]
                if missing:
                    raise ValueError(f"dataset.json in {path!r} has no label for {len(missing)} image(s), e.g. {missing[0]!r}")
                labels = [by_name[n] for n in entries]
                if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in labels):
                    raise ValueError(f"dataset.json labels in {path!r} must be ints >= 0")
        super().__init__(entries, labels, name="zip", split=split, channels=channels, resolution=resolution)

    def _zip(self) -> zipfile.ZipFile:
        # One handle per process: a ZipFile must not be shared across the fork of a DataLoader worker.
        if self._archive is None or self._archive_pid != os.getpid():
            self._archive, self._archive_pid = zipfile.ZipFile(self.path), os.getpid()
        return self._archive

    def read_bytes(self, index: int) -> bytes:
        return self._zip().read(self.entries[index])

    def __getstate__(self):
        return {**self.__dict__, "_archive": None, "_archive_pid": None}


def _label_table(text: bytes, path: str):
    """The "labels" list of dataset.json ([[name, label], ...] or None); ValueError naming the archive."""
    try:
        document = json.loads(text)
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"dataset.json in {path!r} is not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise ValueError(f"dataset.json in {path!r} must be a JSON object with a \"labels\" key; got a "
                         f"{type(document).__name__}")
    table = document.get("labels")
    if table is not None and (not isinstance(table, list) or not all(
            isinstance(row, list) and len(row) == 2 and isinstance(row[0], str) for row in table)):
        raise ValueError(f"dataset.json in {path!r}: \"labels\" must be null or a list of [file name, label] "
                         f"pairs")
    return table
