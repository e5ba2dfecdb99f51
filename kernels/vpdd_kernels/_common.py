"""Shared host-side helpers of the Triton launchers: coefficient packing, seeds, block sizes.

The kernels take the per-sample schedule values of :class:`~vpdd.diffusion.schedule.StepCoefficients` as
one contiguous ``(B, 12)`` float64 tensor (the field order of the named tuple, see ``COEF_*`` below), so a
kernel gathers them with ``tl.load(coef + b * 12 + COEF_X)``. Seeds are drawn from the caller's
``torch.Generator`` into a device tensor (no host synchronisation, CUDA-graph friendly) and loaded by the
kernel; Philox counters are per element (row · C + class), so results never depend on block sizes.
"""

from __future__ import annotations

import math

import torch

from vpdd.diffusion.schedule import StepCoefficients

EPS = 1e-30  # the one-hot floor of the released code
LOG_FLOOR = -70.0
FLOOR = math.exp(LOG_FLOOR)

# field offsets inside one packed row of StepCoefficients
COEF_CUM_KEEP, COEF_CUM_REPLACE, COEF_CUM_MASK = 0, 1, 2
COEF_KEEP, COEF_REPLACE, COEF_MASK = 3, 4, 5
COEF_PREV_KEEP, COEF_PREV_REPLACE, COEF_PREV_MASK = 6, 7, 8
COEF_CROSS_CUM_REPLACE, COEF_CROSS_REPLACE, COEF_CROSS_PREV_REPLACE = 9, 10, 11
N_COEF = 12

MAX_BLOCK_K = 4096  # class-block of the row loops (a row of K ≤ 4096 is one block)


def pack_coefficients(coef: StepCoefficients, batch: int, device: torch.device) -> torch.Tensor:
    """(B, 12) float64 contiguous, on ``device``."""
    packed = torch.stack([v.to(device=device, dtype=torch.float64).reshape(-1) for v in coef], dim=1)
    if packed.shape != (batch, N_COEF):
        raise ValueError(f"coefficients: shape {tuple(packed.shape)}, expected ({batch}, {N_COEF})")
    return packed.contiguous()


def draw_seed(generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """A (1,) int64 Philox seed on ``device`` drawn from ``generator`` (the default generator if None)."""
    return torch.randint(0, 2**62, (1,), generator=generator, device=device, dtype=torch.int64)


def block_k(n_classes: int, override: int | None = None) -> int:
    if override is not None:
        if override & (override - 1) or override < 16:
            raise ValueError(f"block_k={override}: expected a power of two >= 16")
        return override
    return min(MAX_BLOCK_K, max(16, 1 << (n_classes - 1).bit_length()))


def num_warps(block: int) -> int:
    return 4 if block <= 1024 else (8 if block <= 4096 else 16)


def check_logits(z: torch.Tensor, x_t: torch.Tensor) -> None:
    if z.dim() != 3:
        raise ValueError(f"logits: shape {tuple(z.shape)}, expected (B, N, K)")
    if z.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"logits dtype {z.dtype}: expected float32, bfloat16 or float16")
    if x_t.shape != z.shape[:2]:
        raise ValueError(f"x_t: shape {tuple(x_t.shape)}, expected {tuple(z.shape[:2])}")
