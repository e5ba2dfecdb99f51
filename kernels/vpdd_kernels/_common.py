"""What every op shares: the constants, the per-sample schedule coefficients, the PyTorch row helpers and the
host-side helpers of the Triton launchers. Imports only torch (never Triton, never ``vpdd``).

The kernels take the per-sample schedule values of :class:`StepCoefficients` as one contiguous ``(B, 12)``
float64 tensor (the field order of the named tuple), so a kernel gathers them with
``tl.load(coef + b * 12 + field)``. Seeds are drawn from the caller's ``torch.Generator`` into a device
tensor (no host synchronisation, CUDA-graph friendly); Philox counters are per element (row · C + class),
so results never depend on block sizes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

EPS = 1e-30  # the one-hot floor of the released code
LOG_FLOOR = -70.0  # the clamp of log-probabilities
FLOOR = math.exp(LOG_FLOOR)  # the clamped probability of a class the prediction rules out
CHUNK_ELEMENTS = 1 << 18  # floats per temporary in the row-chunked PyTorch passes (1 MiB in float32)
MAX_BLOCK_K = 4096  # class block of the Triton row loops (a row of K <= 4096 is one block)


class StepCoefficients(NamedTuple):
    """Per-sample schedule values of one modality for a reverse/forward step t_prev → t (all (B,) float64).

    ``cum_*`` are at t, ``prev_*`` are the cumulative values at t_prev (the identity when t_prev = -1), and
    ``keep/replace/mask`` are the transition t_prev → t. ``replace`` values are per class (divided by K_M).
    """

    cum_keep: torch.Tensor
    cum_replace: torch.Tensor
    cum_mask: torch.Tensor
    keep: torch.Tensor
    replace: torch.Tensor
    mask: torch.Tensor
    prev_keep: torch.Tensor
    prev_replace: torch.Tensor
    prev_mask: torch.Tensor
    # the *other* modality's per-class replace masses (at t, of the transition, at t_prev): the released
    # code's q_pred puts them on the other modality's classes of every token (algorithm.md §3.4)
    cross_cum_replace: torch.Tensor
    cross_replace: torch.Tensor
    cross_prev_replace: torch.Tensor


# ------------------------------------------------------------------------------------- PyTorch row helpers
def row_chunks(n_rows: int, n_cols: int) -> list[slice]:
    step = max(1, CHUNK_ELEMENTS // max(n_cols, 1))
    return [slice(s, min(s + step, n_rows)) for s in range(0, n_rows, step)]


def per_row(coef: StepCoefficients, tokens: int) -> StepCoefficients:
    """(B,) coefficients -> (B*N,) rows."""
    return StepCoefficients(*(v.repeat_interleave(tokens) for v in coef))


def rows_of(coef: StepCoefficients, idx) -> StepCoefficients:
    return StepCoefficients(*(v[idx] for v in coef))


def compute_dtype(z: torch.Tensor) -> torch.dtype:
    """float64 stays float64 (for gradcheck); everything else is computed in float32."""
    return torch.float64 if z.dtype == torch.float64 else torch.float32


def likelihoods(masked: torch.Tensor, cf: StepCoefficients) -> dict[str, torch.Tensor]:
    """Per-row float64 q(x_t | x0 = k) and q(x_t | x_{t'} = k): the value at k = j and the bulk value."""
    q_j = torch.where(masked, cf.cum_mask, cf.cum_keep + cf.cum_replace)
    q_0 = torch.where(masked, cf.cum_mask, cf.cum_replace + EPS * cf.cum_keep)
    u_j = torch.where(masked, cf.mask, cf.keep + cf.replace)
    u_0 = torch.where(masked, cf.mask, cf.replace + EPS * cf.keep)
    u_mask = torch.where(masked, torch.ones_like(q_j), torch.full_like(q_j, EPS))
    return {"q_j": q_j, "q_0": q_0, "u_j": u_j, "u_0": u_0, "u_mask": u_mask}


class RowStats(NamedTuple):
    e: torch.Tensor  # (R, K) exp(z - max) with e_j zeroed on unmasked rows: a chunk temporary to reuse
    s: torch.Tensor  # Σ_k e_k, e_j included
    lse: torch.Tensor  # the row log-sum-exp
    s_notj: torch.Tensor  # Σ_{k≠j} e_k (all k on masked rows), summed without cancellation
    zmax: torch.Tensor


def row_stats(zc: torch.Tensor, j: torch.Tensor, masked: torch.Tensor) -> RowStats:
    """One pass over a chunk of rows: max, exp, the two sums."""
    zf = zc.to(compute_dtype(zc))
    zmax = zf.amax(1, keepdim=True)
    e = torch.sub(zf, zmax).exp_()
    jj = torch.where(masked, 0, j).unsqueeze(1)
    e_j = e.gather(1, jj)
    e.scatter_(1, jj, torch.where(masked.unsqueeze(1), e_j, 0.0))
    s_notj = e.sum(1)
    s = s_notj + torch.where(masked, 0.0, e_j.squeeze(1))
    lse = zmax.squeeze(1) + torch.log(s)
    return RowStats(e, s, lse, s_notj, zmax.squeeze(1))


def kept_sorted(sorted_p: torch.Tensor, r: float) -> torch.Tensor:
    """Top-r on rows sorted in descending order, tie-inclusive: class k is kept iff the mass of the classes
    *strictly* more probable than k is < r (so the top-1 always is). Tied classes share one decision, so the
    kept set does not depend on the sort order; without ties it is VQ-Diffusion's rule, bit for bit."""
    before = torch.cat((torch.zeros_like(sorted_p[:, :1]), sorted_p[:, :-1].cumsum(1)), dim=1)
    tied = torch.zeros_like(sorted_p, dtype=torch.bool)
    tied[:, 1:] = sorted_p[:, 1:] == sorted_p[:, :-1]
    # a tied class takes the mass before its group's first member (``before`` is non-decreasing)
    return before.masked_fill(tied, float("-inf")).cummax(1).values < r


# ------------------------------------------------------------------------------- Triton launcher helpers
def pack_coefficients(coef: StepCoefficients, batch: int, device: torch.device) -> torch.Tensor:
    """(B, 12) float64 contiguous, on ``device``."""
    packed = torch.stack([v.to(device=device, dtype=torch.float64).reshape(-1) for v in coef], dim=1)
    if packed.shape != (batch, len(StepCoefficients._fields)):
        raise ValueError(f"coefficients: shape {tuple(packed.shape)}, expected ({batch}, 12)")
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
