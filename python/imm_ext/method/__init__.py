"""The IMM method in float64 time arithmetic: noise schedules and the DDIM interpolant, the r(s, t)
mapping, the prior weighting w(s, t) and the network parametrisation f_{s,t} (imm-method.md §1, §2.1,
§2.2, §3.3, §3.7, §4.4)."""
from .mapping import MAPPING_KINDS, RMapping
from .parametrization import F_TYPES, TIME_EMBEDDINGS, IMMParametrization, c_in, c_out, c_skip
from .schedules import (SCHEDULES, CosineSchedule, FlowMatchingSchedule, NoiseSchedule, ddim, get_schedule,
                        interpolate)
from .weighting import WEIGHTING_KINDS, PriorWeighting

__all__ = ["CosineSchedule", "FlowMatchingSchedule", "F_TYPES", "IMMParametrization", "MAPPING_KINDS",
           "NoiseSchedule", "PriorWeighting", "RMapping", "SCHEDULES", "TIME_EMBEDDINGS", "WEIGHTING_KINDS",
           "c_in", "c_out", "c_skip", "ddim", "get_schedule", "interpolate"]
