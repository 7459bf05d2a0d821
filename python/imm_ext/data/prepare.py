"""`prepare_dataset(source, out)`: images from the usual sources into the EDM-style zip the loaders read.

Sources: an official CIFAR-10 archive (binary or python version, .tar.gz or extracted; `cifar10.py`), an
image folder (one sub-folder per class, or flat and unlabelled) or a zip of images (with or without
dataset.json). The output is a zip of PNGs named 00000/img00000000.png (a folder per thousand) with a
dataset.json of labels ({"labels": [[name, label], ...]}, or null when unlabelled) and, when known, the
class names. With a resolution every image is cropped to a square and resized: "adm" (the crop of the
ADM ImageNet pipeline: halve with a box filter while the short side is at least twice the resolution,
resize with bicubic so the short side equals it, then take the centre), or "center" (the centre square,
resized with Lanczos). Without one, every image must have the first one's size.

The output is deterministic (same input, same bytes: fixed entry order, time stamps and PNG settings,
whatever the number of worker processes) and written atomically (a temporary file renamed into place).
"""
from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator, Optional, Tuple, Union

from ..progress import progress
from .cifar10 import SPLITS as CIFAR_SPLITS
from .cifar10 import read_cifar10
from .image_files import center_crop

CROPS = ("adm", "center")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
PathLike = Union[str, os.PathLike]


def adm_center_crop(image, resolution: int):
    """The ADM crop of a PIL image: box-halve while the short side >= 2 * resolution, bicubic resize of
    the short side to resolution, centre square."""
    from PIL import Image

    while min(image.size) >= 2 * resolution:
        image = image.resize(tuple(side // 2 for side in image.size), resample=Image.BOX)
    scale = resolution / min(image.size)
    image = image.resize(tuple(round(side * scale) for side in image.size), resample=Image.BICUBIC)
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def _is_cifar(path: Path) -> bool:
    names = {f"{n}{suffix}" for split in CIFAR_SPLITS.values() for n in split for suffix in ("", ".bin")}
    if path.is_dir():  # the batch files sit at the top or one folder down (cifar-10-batches-py/)
        tops = [path, *(child for child in sorted(path.iterdir()) if child.is_dir())]
        return any((folder / name).is_file() for folder in tops for name in names)
    return path.name.endswith((".tar.gz", ".tgz", ".tar"))


class _Source:
    """The images of a CIFAR-10 archive (decoded into memory) or of an image folder / zip (read on
    demand): count, labels, class names, and item i as a PIL image in the requested mode."""

    def __init__(self, path: Path, split: str, channels: int):
        from .image_folder import ImageFolderDataset
        from .image_zip import ImageZipDataset

        self.mode, self.pixels, self.dataset = {1: "L", 3: "RGB"}[channels], None, None
        if _is_cifar(path):
            self.pixels, labels, self.classes = read_cifar10(str(path), split)
            self.labels, self.labelled = [int(v) for v in labels], True
            return
        if split != "train":
            raise ValueError(f"split={split!r}: only CIFAR-10 archives have splits; an image folder or zip is one set")
        if path.is_dir():
            self.dataset = ImageFolderDataset(str(path), channels=channels)
        elif path.is_file() and zipfile.is_zipfile(path):
            self.dataset = ImageZipDataset(str(path), channels=channels)
        elif path.exists():
            raise ValueError(f"{str(path)!r} is neither a CIFAR-10 archive (.tar.gz), an image folder nor a zip")
        else:
            raise FileNotFoundError(f"source not found: {str(path)!r}")
        self.labels, self.classes = self.dataset.labels.tolist(), self.dataset.class_names
        self.labelled = self.dataset.num_classes > 0

    def __len__(self) -> int:
        return len(self.labels)

    def name(self, index: int) -> str:
        return self.dataset.entries[index] if self.dataset is not None else f"image {index}"

    def image(self, index: int):
        from PIL import Image

        if self.pixels is not None:
            return Image.fromarray(self.pixels[index], "RGB").convert(self.mode)
        try:
            with Image.open(io.BytesIO(self.dataset.read_bytes(index))) as image:
                return image.convert(self.mode)
        except (OSError, SyntaxError, ValueError) as error:
            raise ValueError(f"cannot decode {self.name(index)}: {error}") from None


_WORK: dict = {}  # what a worker process prepares: set before the pool forks, or sent once to each worker


def _set_work(work: dict) -> None:
    _WORK.clear()
    _WORK.update(work)


def _prepared(index: int) -> Tuple[bytes, Tuple[int, int]]:
    """Item `index` cropped and resized as asked, as PNG bytes and its (width, height)."""
    image = _WORK["source"].image(index)
    if _WORK["resolution"] is not None:
        image = {"adm": adm_center_crop, "center": center_crop}[_WORK["crop"]](image, _WORK["resolution"])
    return _png(image), image.size


def _prepared_items(work: dict, count: int, workers: int) -> Iterator[Tuple[bytes, Tuple[int, int]]]:
    """_prepared(0 .. count - 1) in order, over `workers` processes."""
    if workers == 1:
        _set_work(work)
        yield from map(_prepared, range(count))
        return
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_set_work, initargs=(work,)) as pool:
        yield from pool.imap(_prepared, range(count), chunksize=64)


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6, optimize=False)
    return buffer.getvalue()


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type, info.external_attr = zipfile.ZIP_STORED, 0o644 << 16
    return info


def prepare_dataset(source: PathLike, out: PathLike, *, split: str = "train", resolution: Optional[int] = None,
                    crop: str = "adm", channels: int = 3, limit: Optional[int] = None, workers: int = 1,
                    show_progress: bool = True) -> dict:
    """Write `source`'s images (see the module docstring) to the zip `out`, decoding, cropping and
    encoding in `workers` processes (the output does not depend on it); returns a summary: the output
    path, image count, shape, whether labelled, class names and the output's SHA-256."""
    source, out = Path(source), Path(out)
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {', '.join(map(repr, CROPS))}; got {crop!r}")
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ValueError(f"channels must be 1 or 3; got {channels!r}")
    for name, value in (("resolution", resolution), ("limit", limit), ("workers", workers)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int or None; got {value!r}")
    if out.suffix.lower() != ".zip":
        raise ValueError(f"out must be a .zip file; got {str(out)!r}")
    images = _Source(source, split, channels)
    count = min(len(images), limit) if limit else len(images)
    work = {"source": images, "resolution": resolution, "crop": crop}
    out.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(descriptor)
    table, size = [], None
    try:
        with zipfile.ZipFile(temporary, "w") as archive:
            items = progress(_prepared_items(work, count, workers), total=count, enabled=show_progress,
                             description=f"prepare {source.name}")
            for index, (png, image_size) in enumerate(items):
                if size is None:
                    size = image_size
                elif image_size != size:
                    raise ValueError(f"{images.name(index)} is {image_size[0]}x{image_size[1]}, unlike the first "
                                     f"image's {size[0]}x{size[1]}; pass a resolution to crop and resize every image")
                entry = f"{index // 1000:05d}/img{index:08d}.png"
                archive.writestr(_entry(entry), png)
                table.append([entry, images.labels[index]])
            if not table:
                raise ValueError(f"{str(source)!r} holds no images")
            document = {"labels": table if images.labelled else None}
            if images.classes:
                document["class_names"] = list(images.classes)
            archive.writestr(_entry("dataset.json"), json.dumps(document))
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    return {"out": str(out), "images": len(table), "shape": [channels, size[1], size[0]], "labelled": images.labelled,
            "class_names": list(images.classes) if images.classes else None, "sha256": digest}

