"""Fused diffusion loss of one modality: per-token (kl, dec_nll, aux), forward and backward; the PyTorch
reference and fallback, and the one copy of the per-row algebra, are in :mod:`vpdd_kernels.loss`.

Per row (kernels.md §1.7, §2.c):

* pass 1: online (max, Σe, Σ_{k≠j} e) and the gathers z_{x0}, z_j;
* in float64: Y, and ρ = ā'/(q_0 β̄' Y) (``loss.bulk_rho`` written in-kernel);
* pass 2 (same program, the row is in L2): Σ log1p(ρ p_k), Σ 1/(1+ρ p_k), Σ p_k/(1+ρ p_k).

``_loss_stats_kernel`` does exactly that and writes ``loss.STATS`` per row; the rest of the forward is
``loss.row_terms`` on them. The backward is one streaming kernel, ``_loss_grad_kernel``:
grad_k = p_k (b0 + a1/(1 + ρ p_k)) with per-row a1, b0 (upstream gradients folded in) and two special
classes (x0 and x_t) overwritten. Nothing (B, N, K)-sized is saved: the extra activation memory is O(B·N)
(the logits are the network's own output), and the backward allocates one logits-sized tensor, the gradient.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vpdd_kernels import _common as cm
from vpdd_kernels._jit_common import EPS, FLOOR, LOG_FLOOR, _block, _coefs, _log1p, _token_row
from vpdd_kernels.loss import STATS, row_gradients, row_terms


@triton.jit
def _loss_stats_kernel(
    z_ptr, x0_ptr, xt_ptr, coef_ptr, stats_ptr,
    N, K, R, n_other,
    stride_zb, stride_zn, stride_zk,
    NEED_GRAD: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    # x_t (B·N,) is contiguous: strides (N, 1)
    row, b, _, zrow, masked, j, m, s, s_notj = _token_row(
        z_ptr, xt_ptr, N, K, stride_zb, stride_zn, stride_zk, N, 1, BLOCK_K
    )
    i = tl.load(x0_ptr + row)
    log_s = tl.log(s.to(tl.float64))  # log p = (z - max) - log Σe: invariant to shifted logits
    logp_i = (tl.load(zrow + i * stride_zk).to(tl.float32) - m).to(tl.float64) - log_s
    logp_j = (tl.load(zrow + j * stride_zk).to(tl.float32) - m).to(tl.float64) - log_s
    p_notj = s_notj / s

    ck, cr, cmk, _, _, _, pk, pr, _, ccr, _, _ = _coefs(coef_ptr, b)
    q_j = tl.where(masked, cmk, ck + cr)
    q_0 = tl.where(masked, cmk, cr + EPS * ck)
    q_c = tl.where(masked, cmk, ccr + EPS * ck)
    p_j = tl.exp(tl.maximum(logp_j, LOG_FLOOR))
    y_m = tl.where(masked, 1.0 / cmk, p_notj.to(tl.float64) / q_0 + p_j / q_j)
    y_m = y_m + EPS + n_other * FLOOR / q_c
    has_bulk = pr > 0
    rho = tl.where(has_bulk, pk / tl.where(has_bulk, q_0 * pr * y_m, 1.0), 0.0)

    scale = (rho / s.to(tl.float64)).to(tl.float32)
    sum_log1p = tl.zeros((), tl.float32)
    sum_v = tl.zeros((), tl.float32)
    sum_pv = tl.zeros((), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs, valid, x = _block(zrow, stride_zk, k0, K, float("-inf"), BLOCK_K)
        e = tl.where(valid & ((offs != j) | masked), tl.exp(x - m), 0.0)
        lp = _log1p(e * scale)
        sum_log1p += tl.sum(lp, axis=0)
        if NEED_GRAD:
            v = tl.where(valid, tl.exp(-lp), 0.0)
            sum_v += tl.sum(v, axis=0)
            sum_pv += tl.sum(v * e, axis=0)
    out = stats_ptr + row  # in the order of loss.STATS
    tl.store(out, m.to(tl.float64))
    tl.store(out + R, log_s)
    tl.store(out + 2 * R, p_notj.to(tl.float64))
    tl.store(out + 3 * R, logp_i)
    tl.store(out + 4 * R, logp_j)
    tl.store(out + 5 * R, rho)
    tl.store(out + 6 * R, sum_log1p.to(tl.float64))
    tl.store(out + 7 * R, sum_v.to(tl.float64))
    tl.store(out + 8 * R, (sum_pv / s).to(tl.float64))


@triton.jit
def _loss_grad_kernel(
    z_ptr, grad_ptr, row_ptr, idx_ptr,
    N, K, R,
    stride_zb, stride_zn, stride_zk,
    stride_gb, stride_gn,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    b = row // N
    n = row % N
    zrow = z_ptr + b * stride_zb + n * stride_zn
    grow = grad_ptr + b * stride_gb + n * stride_gn
    zmax = tl.load(row_ptr + row)
    log_s = tl.load(row_ptr + R + row)
    rho = tl.load(row_ptr + 2 * R + row)
    a1 = tl.load(row_ptr + 3 * R + row)
    b0 = tl.load(row_ptr + 4 * R + row)
    g_i = tl.load(row_ptr + 5 * R + row)
    g_j = tl.load(row_ptr + 6 * R + row)
    i = tl.load(idx_ptr + row)
    jj = tl.load(idx_ptr + R + row)
    for k0 in range(0, K, BLOCK_K):
        offs, valid, x = _block(zrow, stride_zk, k0, K, 0.0, BLOCK_K)
        p = tl.exp((x - zmax) - log_s)
        g = p * (b0 + a1 / (1.0 + rho * p))
        g = tl.where(offs == jj, g_j, g)
        g = tl.where(offs == i, g_i, g)
        tl.store(grow + offs.to(tl.int64), g.to(grad_ptr.dtype.element_ty), mask=valid)


class LossFunction(torch.autograd.Function):
    """Per-token (kl, nll, aux) of one modality; Triton forward statistics, Triton streaming backward."""

    @staticmethod
    def forward(ctx, z, x0, x_t, coef, n_other, block_k):  # type: ignore[override]
        b, n, k = z.shape
        rows = b * n
        i_all = x0.reshape(-1).to(torch.int64).contiguous()
        xt_all = x_t.reshape(-1).to(torch.int64).contiguous()
        coefs = cm.pack_coefficients(coef, b, z.device)
        need_grad = z.requires_grad
        stats = torch.empty(len(STATS), rows, dtype=torch.float64, device=z.device)
        blk = cm.block_k(k, block_k)
        _loss_stats_kernel[(rows,)](
            z, i_all, xt_all, coefs, stats,
            n, k, rows, int(n_other),
            z.stride(0), z.stride(1), z.stride(2),
            NEED_GRAD=need_grad, BLOCK_K=blk, num_warps=cm.num_warps(blk),
        )  # fmt: skip
        kl, nll, aux, saved = row_terms(stats, i_all, xt_all, cm.per_row(coef, n), k, int(n_other), need_grad)
        if need_grad:
            ctx.saved = saved
            ctx.block_k = blk
            ctx.save_for_backward(z, i_all)
        out_dtype = torch.float32
        return kl.to(out_dtype).reshape(b, n), nll.to(out_dtype).reshape(b, n), aux.to(out_dtype).reshape(b, n)

    @staticmethod
    def backward(ctx, g_kl, g_nll, g_aux):  # type: ignore[override]
        z, i_all = ctx.saved_tensors
        sv = ctx.saved
        b, n, k = z.shape
        rows = b * n
        a1, b0, grad_i, grad_j = row_gradients(sv, g_kl, g_nll, g_aux)
        row_vals = torch.stack([sv["zmax"], sv["log_s"], sv["rho"], a1, b0, grad_i, grad_j]).to(torch.float32)
        idx = torch.stack([i_all, sv["j"]]).contiguous()
        grad = torch.empty(b, n, k, dtype=z.dtype, device=z.device)
        _loss_grad_kernel[(rows,)](
            z, grad, row_vals, idx,
            n, k, rows,
            z.stride(0), z.stride(1), z.stride(2),
            grad.stride(0), grad.stride(1),
            BLOCK_K=ctx.block_k, num_warps=cm.num_warps(ctx.block_k),
        )  # fmt: skip
        return grad, None, None, None, None, None


def loss_terms(
    z: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    coef: cm.StepCoefficients,
    n_other_codes: int = 0,
    *,
    block_k: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token (kl, dec_nll, aux), each (B, N) float32, differentiable w.r.t. the logits ``z`` (B, N, K)
    float32/bf16; same contract as :func:`vpdd_kernels.loss.loss_terms` (``coef`` for t_prev = t-1)."""
    cm.check_logits(z, x_t)
    return LossFunction.apply(z, x0, x_t, coef, int(n_other_codes), block_k)
