"""Evaluation that runs offline (data-and-metrics.md): feature-set metrics (Frechet distance, KID,
precision/recall, density/coverage, sliced Wasserstein), metrics for the 2-D toys, frozen feature
networks shipped with the package for digits and Fashion-MNIST, `image_metrics` that reports every
image metric beside its real-vs-real floor, and an optional Inception FID (extra `fid`)."""
from .feature_nets import FEATURE_NET_NAMES, FeatureNet, load_feature_net
from .frechet import frechet_distance
from .image_metrics import extract_features, image_metrics
from .inception import inception_fid
from .kid import kernel_inception_distance
from .nearest_neighbours import density_coverage, precision_recall
from .sliced_wasserstein import sliced_wasserstein
from .toy_metrics import toy_metrics

__all__ = ["FEATURE_NET_NAMES", "FeatureNet", "density_coverage", "extract_features", "frechet_distance", "image_metrics",
           "inception_fid", "kernel_inception_distance", "load_feature_net", "precision_recall", "sliced_wasserstein",
           "toy_metrics"]
