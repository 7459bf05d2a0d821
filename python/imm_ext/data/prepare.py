"""`prepare_dataset(source, out)`: images from the usual sources into the EDM-style zip the loaders read.

Sources: an official CIFAR-10 archive (binary or python version, .tar.gz or extracted; `cifar10.py`), an
image folder (one sub-folder per class, or flat and unlabelled) or a zip of images (with or without
dataset.json). The output is a zip of PNGs named 00000/img00000000.png (a folder per thousand) with a
dataset.json of labels ({"labels": [[name, label], ...]}, or null when unlabelled) and, when known, the
class names. With a resolution every image is cropped to a square and resized: "adm" (the crop of the
ADM ImageNet pipeline: halve with a box filter while the short side is at least twice the resolution,
resize with bicubic so the short side equals it, then take the centre), or "center" (the centre square,
resized with Lanczos). Without one, every image must have the first one's size.

The output is deterministic (same input, same bytes: fixed entry order, time stamps and PNG settings)
and written atomically (a temporary file renamed into place).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator, List, Optional, Tuple, Union

from ..progress import progress
from .cifar10 import SPLITS as CIFAR_SPLITS
from .cifar10 import read_cifar10

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


def center_crop(image, resolution: int):
    """The centre square of a PIL image, resized with Lanczos to resolution x resolution."""
    from PIL import Image

    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    return image if side == resolution else image.resize((resolution, resolution), Image.LANCZOS)


def _is_cifar(path: Path) -> bool:
    names = {f"{n}{suffix}" for split in CIFAR_SPLITS.values() for n in split for suffix in ("", ".bin")}
    if path.is_dir():
        return any(name in names for _, _, files in os.walk(path) for name in files)
    return path.name.endswith((".tar.gz", ".tgz", ".tar"))


def _source_images(source: Path, split: str, channels: int) -> Tuple[int, Iterator[Tuple[str, object, int]],
                                                                     Optional[List[str]], bool]:
    """(count, iterator of (name, PIL image, label), class names, labelled) of any supported source."""
    from PIL import Image

    mode = {1: "L", 3: "RGB"}[channels]
    if _is_cifar(source):
        images, labels, classes = read_cifar10(str(source), split)

        def cifar():
            for index, (pixels, label) in enumerate(zip(images, labels)):
                yield f"{split}[{index}]", Image.fromarray(pixels, "RGB").convert(mode), int(label)

        return len(images), cifar(), classes, True
    if split != "train":
        raise ValueError(f"split={split!r}: only CIFAR-10 archives have splits; an image folder or zip is one set")
    from .image_folder import ImageFolderDataset
    from .image_zip import ImageZipDataset

    if source.is_dir():
        dataset = ImageFolderDataset(str(source), channels=channels)
    elif source.is_file() and zipfile.is_zipfile(source):
        dataset = ImageZipDataset(str(source), channels=channels)
    elif source.exists():
        raise ValueError(f"{str(source)!r} is neither a CIFAR-10 archive (.tar.gz), an image folder nor a zip")
    else:
        raise FileNotFoundError(f"source not found: {str(source)!r}")

    def files():
        for index, name in enumerate(dataset.entries):
            try:
                with Image.open(io.BytesIO(dataset.read_bytes(index))) as image:
                    converted = image.convert(mode)
            except (OSError, SyntaxError, ValueError) as error:
                raise ValueError(f"cannot decode {name}: {error}") from None
            yield name, converted, int(dataset.labels[index])

    return len(dataset), files(), dataset.class_names, dataset.num_classes > 0


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6, optimize=False)
    return buffer.getvalue()


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type, info.external_attr = zipfile.ZIP_STORED, 0o644 << 16
    return info


def prepare_dataset(source: PathLike, out: PathLike, *, split: str = "train", resolution: Optional[int] = None,
                    crop: str = "adm", channels: int = 3, limit: Optional[int] = None,
                    show_progress: bool = True) -> dict:
    """Write `source`'s images (see the module docstring) to the zip `out`; returns a summary: the output
    path, image count, shape, whether labelled, class names and the output's SHA-256."""
    source, out = Path(source), Path(out)
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {', '.join(map(repr, CROPS))}; got {crop!r}")
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ValueError(f"channels must be 1 or 3; got {channels!r}")
    for name, value in (("resolution", resolution), ("limit", limit)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int or None; got {value!r}")
    if out.suffix.lower() != ".zip":
        raise ValueError(f"out must be a .zip file; got {str(out)!r}")
    count, images, classes, labelled = _source_images(source, split, channels)
    count = min(count, limit) if limit else count
    out.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(descriptor)
    table, size = [], None
    try:
        with zipfile.ZipFile(temporary, "w") as archive:
            crops = {"adm": adm_center_crop, "center": center_crop}
            for index, (name, image, label) in enumerate(progress(images, total=count, enabled=show_progress,
                                                                  description=f"prepare {source.name}")):
                if index == count:
                    break
                if resolution is not None:
                    image = crops[crop](image, resolution)
                if size is None:
                    size = image.size
                elif image.size != size:
                    raise ValueError(f"{name} is {image.size[0]}x{image.size[1]}, unlike the first image's "
                                     f"{size[0]}x{size[1]}; pass a resolution to crop and resize every image")
                entry = f"{index // 1000:05d}/img{index:08d}.png"
                archive.writestr(_entry(entry), _png(image))
                table.append([entry, label])
            if not table:
                raise ValueError(f"{str(source)!r} holds no images")
            document = {"labels": table if labelled else None}
            if classes:
                document["class_names"] = list(classes)
            archive.writestr(_entry("dataset.json"), json.dumps(document))
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    return {"out": str(out), "images": len(table), "shape": [channels, size[1], size[0]], "labelled": labelled,
            "class_names": list(classes) if classes else None, "sha256": digest}

