"""The IMM method in float64 time arithmetic: noise schedules and the DDIM interpolant, the r(s, t)
mapping and the prior weighting w(s, t) (imm-method.md §1, §3.3, §3.7)."""
from .mapping import MAPPING_KINDS, RMapping
from .schedules import (SCHEDULES, CosineSchedule, FlowMatchingSchedule, NoiseSchedule, ddim, get_schedule,
                        interpolate)
from .weighting import WEIGHTING_KINDS, PriorWeighting

__all__ = ["CosineSchedule", "FlowMatchingSchedule", "MAPPING_KINDS", "NoiseSchedule", "PriorWeighting",
           "RMapping", "SCHEDULES", "WEIGHTING_KINDS", "ddim", "get_schedule", "interpolate"]
