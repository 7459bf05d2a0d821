"""`load_dataset(name, path=, split=, **options)`: one entry point for every data source.

| name | source | options |
|---|---|---|
| 8gaussians, 25gaussians, checkerboard, moons, swissroll, circles, 2spirals, pinwheel | generated (`toy2d`); splits train / test | n=100000, seed=0, std=0.5 |
| digits | scikit-learn's 8x8 digits; splits train (1497) / test (300) / all | - |
| fashion-mnist | Debian package dataset-fashion-mnist, or path= to its IDX files; splits train / test | pad=False (to 32x32) |
| folder | path= a folder of images, one subfolder per class or flat | channels=3, resolution=None |
| zip | path= an EDM-style zip of images with optional dataset.json labels | channels=3, resolution=None |
| npy, npz | path= an image array (uint8 or float; NCHW, NHWC or NHW), labels under "labels" | key, layout, value_range |
| latents | path= SD-VAE latents (.npy/.npz), see `latents.py` for the layout | key, stored, channel_mean, channel_std, scale |

Image items are float32 (C, H, W) in [-1, 1]; toy items (2,); latent items (C, H, W) normalised.
For path sources the file or folder is the data: `split` must stay "train".
"""
from __future__ import annotations

import functools
import inspect
import os

from . import toy2d
from .arrays import load_image_arrays
from .digits import load_digits
from .fashion_mnist import load_fashion_mnist
from .image_folder import ImageFolderDataset
from .image_zip import ImageZipDataset
from .latents import load_latents
from .toys import load_toy

# Every loader takes (path, split, **options).
_GENERATED = {**{name: functools.partial(load_toy, name) for name in toy2d.NAMES}, "digits": load_digits}
_OPTIONAL_PATH = {"fashion-mnist": load_fashion_mnist}
_FROM_PATH = {"folder": ImageFolderDataset, "zip": ImageZipDataset,
              "npy": functools.partial(load_image_arrays, name="npy"),
              "npz": functools.partial(load_image_arrays, name="npz"), "latents": load_latents}
LOADERS = {**_GENERATED, **_OPTIONAL_PATH, **_FROM_PATH}
DATASET_NAMES = tuple(LOADERS)


def _check_options(name: str, options: dict) -> None:
    accepted = [p for p in inspect.signature(LOADERS[name]).parameters if p not in ("path", "split", "name")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(map(repr, unknown))} for the dataset {name!r}; "
                        f"it takes {', '.join(map(repr, accepted)) or 'no options'}")


def load_dataset(name: str, *, path=None, split: str = "train", **options):
    """The dataset `name` (see the table above) as a torch Dataset of (x, label) items with attributes
    name, sample_shape and num_classes (0 when unlabelled); in-memory ones also have tensors()."""
    if not isinstance(name, str) or name not in LOADERS:
        raise ValueError(f"name must be one of {', '.join(map(repr, DATASET_NAMES))}; got {name!r}")
    if not isinstance(split, str):
        raise TypeError(f"split must be a str; got {type(split).__name__}")
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str, os.PathLike or None; got {type(path).__name__}")
    _check_options(name, options)
    if name in _GENERATED and path is not None:
        raise ValueError(f"the dataset {name!r} is built in; it takes no path (got path={path!r})")
    if name in _FROM_PATH:
        if path is None:
            raise ValueError(f"the dataset {name!r} reads files: pass path=")
        if split != "train":
            raise ValueError(f"split={split!r}: for the dataset {name!r} the files at path= are the data; "
                             f"split applies to the built-in datasets only (leave it at 'train')")
    return LOADERS[name](path=None if path is None else os.fspath(path), split=split, **options)
