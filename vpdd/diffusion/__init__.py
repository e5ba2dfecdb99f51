"""VPDD's unified mask-and-replace discrete diffusion (algorithm.md §3): layout, schedule, scheduler.

``MaskReplaceScheduler`` is the entry point for training and sampling. ``reference`` holds the released
code's maths on (B, C, N) log tensors (the oracle); ``fast`` and ``fast_sampling`` hold the per-token closed
forms on index state that a Triton kernel may replace function by function.
"""

from vpdd.diffusion.layout import ACTION, VIDEO, TokenLayout
from vpdd.diffusion.schedule import ScheduleTables, StepCoefficients
from vpdd.diffusion.scheduler import MaskReplaceScheduler

__all__ = ["ACTION", "VIDEO", "MaskReplaceScheduler", "ScheduleTables", "StepCoefficients", "TokenLayout"]
