"""FID the standard way: a dataset's reference statistics (mean and covariance of the 2048-d Inception
pool features) in the EDM `.npz` layout, {"mu": (2048,), "sigma": (2048, 2048)} in float64, the layout of
the published CIFAR-10 and ImageNet references (ADM's reference batches hold the same two keys beside
others, which are ignored); FID of generated images against such a file.

Features are accumulated batch by batch (sums of features and of their outer products, shifted by the
first batch's mean for accuracy), so 50,000 images never sit in memory at once. The covariance is the
unbiased one, as numpy's `np.cov` gives.
"""
from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Iterable, Optional, Tuple, Union

import numpy as np
import torch

from .frechet import frechet_distance_from_stats

PathLike = Union[str, os.PathLike]


class FeatureStatistics:
    """Running mean and unbiased covariance of float64 feature rows."""

    def __init__(self):
        self.count, self.shift, self.total, self.outer = 0, None, None, None

    def add(self, features: torch.Tensor) -> None:
        features = features.detach().to("cpu", torch.float64).reshape(len(features), -1)
        if not torch.isfinite(features).all():
            raise ValueError("the feature network returned NaN or inf")
        if self.shift is None:
            self.shift = features.mean(0)
            self.total = torch.zeros_like(self.shift)
            self.outer = torch.zeros(len(self.shift), len(self.shift), dtype=torch.float64)
        centred = features - self.shift
        self.count += len(features)
        self.total += centred.sum(0)
        self.outer += centred.T @ centred

    def mean_and_covariance(self) -> Tuple[np.ndarray, np.ndarray]:
        if self.count < 2:
            raise ValueError(f"FID statistics need at least 2 images; got {self.count}")
        mean_shifted = self.total / self.count
        covariance = (self.outer - self.count * torch.outer(mean_shifted, mean_shifted)) / (self.count - 1)
        return (self.shift + mean_shifted).numpy(), covariance.numpy()


def inception_statistics(batches: Iterable[torch.Tensor], model) -> Tuple[np.ndarray, np.ndarray, int]:
    """(mu, sigma, count) of the Inception features of image batches (N, 1 or 3, H, W) in [-1, 1]."""
    from .inception import inception_features

    statistics = FeatureStatistics()
    for images in batches:
        statistics.add(inception_features(images, model))
    return (*statistics.mean_and_covariance(), statistics.count)


def save_reference(path: PathLike, mu: np.ndarray, sigma: np.ndarray, **extra) -> Path:
    """Write mu and sigma (and any extra arrays, e.g. the image count) to an `.npz`, atomically."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"the reference statistics file must end in .npz; got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            np.savez(handle, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64),
                     **{k: np.asarray(v) for k, v in extra.items()})
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_reference(path: PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of a reference `.npz`; ValueError naming the file if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FID reference statistics not found: {str(path)!r}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{str(path)!r} is not a readable .npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "mu" not in archive.files or "sigma" not in archive.files:
                raise ValueError(f"{str(path)!r} has no 'mu' and 'sigma' arrays (keys: {', '.join(archive.files)})")
            mu, sigma = archive["mu"].astype(np.float64), archive["sigma"].astype(np.float64)
    except (OSError, EOFError, zipfile.BadZipFile) as error:  # a truncated or damaged archive
        raise ValueError(f"{str(path)!r} is not a readable .npz file ({error})") from None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ValueError(f"{str(path)!r}: mu must be (D,) and sigma (D, D); got {mu.shape} and {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{str(path)!r}: mu and sigma must be finite")
    if not np.allclose(sigma, sigma.T, rtol=1e-6, atol=1e-8 * max(1.0, float(np.abs(sigma).max()))):
        raise ValueError(f"{str(path)!r}: sigma is not symmetric, so not a covariance")
    return mu, sigma


def fid_from_statistics(mu: np.ndarray, sigma: np.ndarray, reference_mu: np.ndarray,
                        reference_sigma: np.ndarray, source: Optional[str] = None) -> float:
    if mu.shape != reference_mu.shape:
        raise ValueError(f"the features are {mu.shape[0]}-d but the reference{' ' + source if source else ''} is "
                         f"{reference_mu.shape[0]}-d; FID references hold 2048-d Inception pool features")
    mu, sigma, reference_mu, reference_sigma = (torch.from_numpy(np.asarray(a, np.float64))
                                                for a in (mu, sigma, reference_mu, reference_sigma))
    return frechet_distance_from_stats(mu, sigma, reference_mu, reference_sigma)
