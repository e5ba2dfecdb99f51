"""VPDD's unified mask-and-replace discrete diffusion (algorithm.md §3): layout, schedule, scheduler.

``MaskReplaceScheduler`` is the entry point for training and sampling. ``reference`` holds the released
code's maths on (B, C, N) log tensors (the oracle); the per-token closed forms on index state (PyTorch and
Triton) are in ``vpdd_kernels``, which the scheduler calls through its one switch.
"""

from vpdd.diffusion.layout import ACTION, VIDEO, TokenLayout
from vpdd.diffusion.schedule import ScheduleTables, StepCoefficients
from vpdd.diffusion.scheduler import MaskReplaceScheduler

__all__ = ["ACTION", "VIDEO", "MaskReplaceScheduler", "ScheduleTables", "StepCoefficients", "TokenLayout"]
