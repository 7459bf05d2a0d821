"""Frozen feature networks for FD/KID/precision/recall on the small datasets ("FID with a LeNet on
MNIST", data-and-metrics.md), and their shipped weights.

Each network is a small classifier trained once with a fixed seed by `train_feature_net.py`; its
weights ship in `weights/<name>.safetensors`, and `weights/manifest.json` records each file's sha256,
held-out test accuracy and training settings. `load_feature_net(name)` verifies the hash before
loading and returns the network in eval mode with gradients off; `net.features(images)` gives the
penultimate-layer activations used by the metrics, `net(images)` the class logits. Inputs are images
in [-1, 1] of the dataset's shape; Fashion-MNIST padded to 32x32 is cropped back to 28x28.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

import torch
from torch import nn

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
MANIFEST = "manifest.json"


class FeatureNet(nn.Module):
    """A classifier split into `body` (images -> features) and `head` (features -> logits)."""

    def __init__(self, name: str, input_shape: tuple, body: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.name, self.input_shape, self.feature_dim = name, tuple(input_shape), feature_dim
        self.body, self.head = body, nn.Linear(feature_dim, num_classes)

    def _fit_input(self, images: torch.Tensor) -> torch.Tensor:
        """Check the shape; crop a symmetric border (e.g. 32x32 padding around 28x28 images) if present."""
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            raise TypeError(f"images must be a floating torch.Tensor; got {type(images).__name__}")
        c, h, w = self.input_shape
        if images.ndim != 4 or images.shape[1] != c or images.shape[2] < h or images.shape[3] < w \
                or (images.shape[2] - h) % 2 or (images.shape[3] - w) % 2:
            raise ValueError(f"the {self.name!r} feature net takes images (N, {c}, {h}, {w}) (or with an even "
                             f"padding around them); got shape {tuple(images.shape)}")
        top, left = (images.shape[2] - h) // 2, (images.shape[3] - w) // 2
        return images[:, :, top:top + h, left:left + w].to(self.head.weight.dtype)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(self._fit_input(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def digits_mlp() -> FeatureNet:
    """MLP for 8x8 digits: 64 -> 128 -> 64 features -> 10 classes."""
    body = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
    return FeatureNet("digits", (1, 8, 8), body, 64, 10)


def fashion_lenet() -> FeatureNet:
    """LeNet-5 style CNN for 28x28: conv 5x5 (6) - pool - conv 5x5 (16) - pool - 120 - 84 features -> 10."""
    body = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU())
    return FeatureNet("fashion-mnist", (1, 28, 28), body, 84, 10)


ARCHITECTURES = {"digits": digits_mlp, "fashion-mnist": fashion_lenet}
FEATURE_NET_NAMES = tuple(ARCHITECTURES)


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(weights_dir: str) -> dict:
    path = os.path.join(weights_dir, MANIFEST)
    if not os.path.isfile(path):
        return {}
    with open(path) as file:
        return json.load(file)


def weights_file(name: str) -> str:
    return f"{name}.safetensors"


def load_feature_net(name: str, *, weights_dir: Optional[str] = None) -> FeatureNet:
    """The frozen feature network for the dataset `name` ("digits" or "fashion-mnist"), its weights
    checked against the sha256 in the manifest (RuntimeError on a mismatch or a missing file)."""
    from safetensors.torch import load_file

    if name not in ARCHITECTURES:
        raise ValueError(f"name must be one of {', '.join(map(repr, FEATURE_NET_NAMES))}; got {name!r}")
    directory = WEIGHTS_DIR if weights_dir is None else os.fspath(weights_dir)
    entry = read_manifest(directory).get(name)
    path = os.path.join(directory, weights_file(name))
    if entry is None or not os.path.isfile(path):
        raise RuntimeError(f"no shipped weights for the {name!r} feature net in {directory} (manifest entry or "
                           f"{weights_file(name)} missing); recreate them with "
                           f"`python -m imm_ext.eval.train_feature_net {name}`")
    actual = sha256_of(path)
    if actual != entry["sha256"]:
        raise RuntimeError(f"{path} has sha256 {actual}, but the manifest records {entry['sha256']}: the file is "
                           f"corrupt or was replaced; reinstall imm_ext or retrain with "
                           f"`python -m imm_ext.eval.train_feature_net {name}` (which rewrites the manifest)")
    net = ARCHITECTURES[name]()
    net.load_state_dict(load_file(path))
    net.test_accuracy = entry["test_accuracy"]
    return net.eval().requires_grad_(False)
