"""Fused posterior: logits (B, N, K), x_t, per-sample coefficients -> log p_θ(x_{t'} | x_t) (B, N, K+1);
the PyTorch reference and fallback is :mod:`vpdd_kernels.posterior`.

One program per token row, two passes over the row (the second usually hits L2):

1. online (max, Σe, Σ_{k≠j} e) and the gather of z_j;
2. per-row float64 scalars (the closed form of ``posterior``: out_k = log(β̄'Y + ā'/q_0 · p_k) +
   log u_0, a special value at k = j and at MASK), then ``out_k`` written once, clamped to [-70, 0].

Traffic: one read of the logits plus one write of the posterior (≈ 2 F, kernels.md §2.a). Top-r truncation
needs a per-row kept set; this op is not on the sampling path (the reverse step never forms the posterior),
so ``truncation_r < 1`` falls back to the PyTorch reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vpdd_kernels import _common as cm
from vpdd_kernels import posterior
from vpdd_kernels._jit_common import FLOOR, LOG_FLOOR, _block, _posterior_row, _token_row


@triton.jit
def _posterior_kernel(
    z_ptr, xt_ptr, coef_ptr, out_ptr,
    N, K,
    stride_zb, stride_zn, stride_zk,
    stride_xb, stride_xn,
    stride_ob, stride_on,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    _, b, n, zrow, masked, j, m, s, s_notj = _token_row(
        z_ptr, xt_ptr, N, K, stride_zb, stride_zn, stride_zk, stride_xb, stride_xn, BLOCK_K
    )
    orow = out_ptr + b * stride_ob + n * stride_on
    lse = m + tl.log(s)
    z_j = tl.load(zrow + j * stride_zk).to(tl.float32)
    p_j = tl.maximum(tl.exp(z_j - lse), FLOOR).to(tl.float64)  # clamp(min=e^-70)
    p_notj = (s_notj / s).to(tl.float64)

    base, slope, log_u0, at_j, at_m = _posterior_row(coef_ptr, b, masked, p_notj, p_j)

    for k0 in range(0, K, BLOCK_K):
        offs, valid, x = _block(zrow, stride_zk, k0, K, 0.0, BLOCK_K)
        p = tl.maximum(tl.exp(x - lse), FLOOR)
        val = tl.log(base + slope * p) + log_u0
        val = tl.where((offs == j) & (~masked), at_j, val)
        val = tl.minimum(tl.maximum(val, LOG_FLOOR), 0.0)
        tl.store(orow + offs.to(tl.int64), val, mask=valid)
    tl.store(orow + K, at_m)


def posterior_log_probs(
    z: torch.Tensor,
    x_t: torch.Tensor,
    coef: cm.StepCoefficients,
    truncation_r: float | None = None,
    *,
    block_k: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, N, K+1) float32 log p_θ(x_{t'} | x_t), MASK last, clamped to [-70, 0]; same contract as
    :func:`vpdd_kernels.posterior.posterior_log_probs`. ``z`` may be any strided (B, N, K) float32/bf16
    view; ``out`` (optional) any strided (B, N, K+1) float32 view with a unit class stride."""
    if truncation_r is not None and truncation_r < 1:
        return posterior.posterior_log_probs(z, x_t, coef, truncation_r)
    cm.check_logits(z, x_t)
    b, n, k = z.shape
    if out is None:
        out = torch.empty(b, n, k + 1, dtype=torch.float32, device=z.device)
    elif out.shape != (b, n, k + 1) or out.stride(2) != 1 or out.dtype != torch.float32:
        raise ValueError(f"out: expected float32 ({b}, {n}, {k + 1}) with unit class stride")
    coefs = cm.pack_coefficients(coef, b, z.device)
    blk = cm.block_k(k, block_k)
    _posterior_kernel[(b * n,)](
        z, x_t, coefs, out,
        n, k,
        z.stride(0), z.stride(1), z.stride(2),
        x_t.stride(0), x_t.stride(1),
        out.stride(0), out.stride(1),
        BLOCK_K=blk, num_warps=cm.num_warps(blk),
    )  # fmt: skip
    return out
