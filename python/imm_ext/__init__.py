"""imm_ext: Inductive Moment Matching (Zhou, Ermon, Song, ICML 2025) with a C++/CUDA core.

Pairwise kernels and MMD (`mmd_loss`, `MMDLoss`, `pairwise_kernel`) run on hand-written CPU and CUDA
kernels; `imm_ext.kernels` exposes the same computations on numpy and CuPy arrays; `imm_ext.method`
holds the method (schedules, r(s, t) mapping, weighting, parametrisation, loss, samplers, presets);
`imm_ext.nn` the timestep-conditioned building blocks; `imm_ext.models` the networks it trains;
`imm_ext.data` the offline datasets and the batch stream; `imm_ext.eval` the metrics and their frozen
feature networks; `imm_ext.train` and the `imm-ext` command the training loop.
"""
from ._core import build_info
from .health_check import doctor
from .ops import MMDLoss, mmd_loss, mmd_terms, pairwise_kernel
from . import data, eval, kernels, method, models, nn
from .method import (PRESETS, IMMLoss, IMMParametrization, IMMPreset, IMMSampler, PriorWeighting, RMapping,
                     get_schedule, sampling_times)

__version__ = build_info()["version"]

__all__ = ["IMMLoss", "IMMParametrization", "IMMPreset", "IMMSampler", "MMDLoss", "PRESETS", "PriorWeighting",
           "RMapping", "build_info", "data", "doctor", "eval", "get_schedule", "kernels", "method", "models", "mmd_loss",
           "mmd_terms", "nn", "pairwise_kernel", "sampling_times", "__version__"]
