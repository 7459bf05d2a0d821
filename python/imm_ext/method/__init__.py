"""The IMM method in float64 time arithmetic: noise schedules and the DDIM interpolant, the r(s, t)
mapping, the prior weighting w(s, t), the network parametrisation f_{s,t}, the IMM loss and the
few-step samplers (imm-method.md §1-§4), and the flow-matching baseline on the same network.
"""
from .flow_matching import FM_SOLVERS, FlowMatchingLoss, FlowMatchingStep, flow_matching_sampler
from .loss import LOSS_KERNELS, IMMLoss
from .mapping import MAPPING_KINDS, RMapping
from .presets import PRESETS, IMMPreset
from .parametrization import F_TYPES, TIME_EMBEDDINGS, IMMParametrization, c_in, c_out, c_skip
from .sampling import DISCRETIZATIONS, SAMPLING_METHODS, IMMSampler, sampling_times
from .schedules import (SCHEDULES, CosineSchedule, FlowMatchingSchedule, NoiseSchedule, ddim, get_schedule,
                        interpolate)
from .weighting import WEIGHTING_KINDS, PriorWeighting

__all__ = ["CosineSchedule", "DISCRETIZATIONS", "FM_SOLVERS", "FlowMatchingLoss", "FlowMatchingSchedule", "FlowMatchingStep",
           "F_TYPES", "flow_matching_sampler", "IMMLoss", "IMMParametrization", "IMMPreset",
           "IMMSampler", "LOSS_KERNELS", "MAPPING_KINDS", "NoiseSchedule", "PRESETS", "PriorWeighting", "RMapping", "SAMPLING_METHODS",
           "SCHEDULES", "TIME_EMBEDDINGS", "WEIGHTING_KINDS", "c_in", "c_out", "c_skip", "ddim", "get_schedule",
           "interpolate", "sampling_times"]
