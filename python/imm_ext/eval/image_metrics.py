"""All image metrics in one call, each beside its real-vs-real floor.

The real images are split at random into halves A and B. B is the reference for both rows: the
generated images are compared with B, and A (the floor: what a perfect generator would score) is
compared with B too. Both compared sets have the same size m = min(len(generated), len(A)) (random
subsets where needed), so the two rows carry the same small-sample bias; pass at least twice as many
real images as generated ones to use every generated image.
"""
from __future__ import annotations

from typing import Union

import torch

from ..ops.checks import check_int
from .feature_nets import FeatureNet, load_feature_net
from .frechet import frechet_distance
from .kid import kernel_inception_distance
from .nearest_neighbours import density_coverage, precision_recall


@torch.no_grad()
def extract_features(images: torch.Tensor, feature_net: FeatureNet, batch_size: int = 1000) -> torch.Tensor:
    """Penultimate-layer features (N, feature_dim) of images (N, C, H, W) in [-1, 1], in batches."""
    device = next(feature_net.parameters()).device
    return torch.cat([feature_net.features(chunk.to(device)).double().cpu() for chunk in images.split(batch_size)])


def _check_images(name: str, images) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise TypeError(f"{name} must be a floating torch.Tensor of images; got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"{name} must be (N, C, H, W); got shape {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} holds NaN or inf")
    return images.detach()


def _metrics(fake: torch.Tensor, real: torch.Tensor, k: int, seed: int, kid_subsets: int) -> dict:
    return {"fd": frechet_distance(fake, real),
            "kid": kernel_inception_distance(fake, real, subsets=kid_subsets, seed=seed),
            **precision_recall(real, fake, k), **density_coverage(real, fake, k)}


def image_metrics(generated: torch.Tensor, real: torch.Tensor, feature_net: Union[str, FeatureNet], *,
                  k: int = 5, seed: int = 0, batch_size: int = 1000, kid_subsets: int = 100) -> dict:
    """fd, kid, precision, recall, density, coverage of generated images against real ones in the
    features of `feature_net` (a FeatureNet or the name of a shipped one), plus "real_vs_real" (the
    same numbers for two disjoint halves of `real`) and the set sizes used. k: the k-NN metrics' k;
    kid_subsets: KID's number of subsets (of up to 1000 rows each)."""
    generated, real = _check_images("generated", generated), _check_images("real", real)
    if generated.shape[1:] != real.shape[1:]:
        raise ValueError(f"generated and real must have the same image shape; got {tuple(generated.shape[1:])} "
                         f"and {tuple(real.shape[1:])}")
    net = load_feature_net(feature_net) if isinstance(feature_net, str) else feature_net
    if not isinstance(net, FeatureNet):
        raise TypeError(f"feature_net must be a FeatureNet or a feature net name; got {type(feature_net).__name__}")
    check_int("k", k)
    check_int("batch_size", batch_size)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0; got {seed!r}")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(real), generator=generator)
    half_a, half_b = order[:len(real) // 2], order[len(real) // 2:]
    size = min(len(generated), len(half_a))
    if size <= k:
        raise ValueError(f"need more than k={k} images in generated and in each half of real; got "
                         f"{len(generated)} generated and {len(real)} real")
    pick = torch.randperm(len(generated), generator=generator)[:size]
    fake = extract_features(generated[pick], net, batch_size)
    floor = extract_features(real[half_a[:size]], net, batch_size)
    reference = extract_features(real[half_b], net, batch_size)
    return {**_metrics(fake, reference, k, seed, kid_subsets),
            "real_vs_real": _metrics(floor, reference, k, seed, kid_subsets),
            "n_compared": size, "n_reference": len(half_b)}
