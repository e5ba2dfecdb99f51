"""Fused diffusion loss of one modality: per-token (kl, dec_nll, aux), forward and backward.

The maths is :mod:`vpdd.diffusion.fast`'s structured form (kernels.md §1.7): the true posterior is one
constant off {x0, x_t}, so per row the loss needs

* pass 1: online (max, Σe, Σ_{k≠j} e) and the gathers z_{x0}, z_j;
* per row, in float64: Y, and ρ = ā'/(q_0 β̄' Y);
* pass 2 (same program, the row is in L2): Σ log1p(ρ p_k), Σ 1/(1+ρ p_k), Σ p_k/(1+ρ p_k).

``_loss_stats_kernel`` does exactly that and writes 8 numbers per row. The rest of the forward is O(B·N)
per-row float64 algebra on those numbers (``_row_terms``, the same formulas as
``vpdd.diffusion.fast._loss_rows`` after its K-wide pass). The backward is one streaming kernel,
``_loss_grad_kernel``: grad_k = p_k (b0 + a1/(1 + ρ p_k)) with per-row a1, b0 (upstream gradients folded
in) and two special classes (x0 and x_t) overwritten. Nothing (B, N, K)-sized is saved: the extra
activation memory is O(B·N) (the logits are the network's own output), and the backward allocates exactly
one logits-sized tensor, the gradient.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vpdd.diffusion.fast import _clamped_log, likelihoods, per_row
from vpdd.diffusion.schedule import StepCoefficients
from vpdd_kernels import _common as cm
from vpdd_kernels._jit_common import _load_coef, _log1p, _row_softmax_stats

N_STATS = 8  # lse, p_notj, logp_i, logp_j, rho, Σlog1p, Σv, Σpv


@triton.jit
def _loss_stats_kernel(
    z_ptr, x0_ptr, xt_ptr, coef_ptr, stats_ptr,
    N, K, R, n_other,
    stride_zb, stride_zn, stride_zk,
    NEED_GRAD: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    b = row // N
    n = row % N
    zrow = z_ptr + b * stride_zb + n * stride_zn
    i = tl.load(x0_ptr + row)
    xt = tl.load(xt_ptr + row)
    masked = xt == K
    j = tl.where(masked, 0, xt)

    m, s, s_notj = _row_softmax_stats(zrow, stride_zk, K, j, masked, BLOCK_K)
    lse = m + tl.log(s)
    logp_i = tl.load(zrow + i * stride_zk).to(tl.float32) - lse
    logp_j = tl.load(zrow + j * stride_zk).to(tl.float32) - lse
    p_notj = s_notj / s

    ck = _load_coef(coef_ptr, b, 0)
    cr = _load_coef(coef_ptr, b, 1)
    cmk = _load_coef(coef_ptr, b, 2)
    pk = _load_coef(coef_ptr, b, 6)
    pr = _load_coef(coef_ptr, b, 7)
    ccr = _load_coef(coef_ptr, b, 9)
    q_j = tl.where(masked, cmk, ck + cr)
    q_0 = tl.where(masked, cmk, cr + 1e-30 * ck)
    q_c = tl.where(masked, cmk, ccr + 1e-30 * ck)
    p_j = tl.exp(tl.maximum(logp_j, -70.0).to(tl.float64))
    y_m = tl.where(masked, 1.0 / cmk, p_notj.to(tl.float64) / q_0 + p_j / q_j)
    y_m = y_m + 1e-30 + n_other * 3.975449735908647e-31 / q_c
    has_bulk = pr > 0
    rho = tl.where(has_bulk, pk / tl.where(has_bulk, q_0 * pr * y_m, 1.0), 0.0)

    scale = (rho / s.to(tl.float64)).to(tl.float32)
    sum_log1p = tl.zeros((), tl.float32)
    sum_v = tl.zeros((), tl.float32)
    sum_pv = tl.zeros((), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs = k0 + tl.arange(0, BLOCK_K)
        valid = offs < K
        x = tl.load(zrow + offs.to(tl.int64) * stride_zk, mask=valid, other=float("-inf")).to(tl.float32)
        e = tl.where(valid & ((offs != j) | masked), tl.exp(x - m), 0.0)
        lp = _log1p(e * scale)
        sum_log1p += tl.sum(lp, axis=0)
        if NEED_GRAD:
            v = tl.where(valid, tl.exp(-lp), 0.0)
            sum_v += tl.sum(v, axis=0)
            sum_pv += tl.sum(v * e, axis=0)
    out = stats_ptr + row
    tl.store(out, lse.to(tl.float64))
    tl.store(out + R, p_notj.to(tl.float64))
    tl.store(out + 2 * R, logp_i.to(tl.float64))
    tl.store(out + 3 * R, logp_j.to(tl.float64))
    tl.store(out + 4 * R, rho)
    tl.store(out + 5 * R, sum_log1p.to(tl.float64))
    tl.store(out + 6 * R, sum_v.to(tl.float64))
    tl.store(out + 7 * R, (sum_pv / s).to(tl.float64))


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
    lse = tl.load(row_ptr + row)
    rho = tl.load(row_ptr + R + row)
    a1 = tl.load(row_ptr + 2 * R + row)
    b0 = tl.load(row_ptr + 3 * R + row)
    g_i = tl.load(row_ptr + 4 * R + row)
    g_j = tl.load(row_ptr + 5 * R + row)
    i = tl.load(idx_ptr + row)
    jj = tl.load(idx_ptr + R + row)
    for k0 in range(0, K, BLOCK_K):
        offs = k0 + tl.arange(0, BLOCK_K)
        valid = offs < K
        x = tl.load(zrow + offs.to(tl.int64) * stride_zk, mask=valid, other=0.0).to(tl.float32)
        p = tl.exp(x - lse)
        g = p * (b0 + a1 / (1.0 + rho * p))
        g = tl.where(offs == jj, g_j, g)
        g = tl.where(offs == i, g_i, g)
        tl.store(grow + offs.to(tl.int64), g.to(grad_ptr.dtype.element_ty), mask=valid)


def _row_terms(st: torch.Tensor, i, xt, c: StepCoefficients, n_codes: int, n_other: int, need_grad: bool):
    """Per-row float64 algebra of ``fast._loss_rows`` after its K-wide pass, from the kernel's stats."""
    lse, p_notj, logp_i, logp_j, rho, sum_log1p, sum_v, sum_pv = st
    eps, floor = cm.EPS, cm.FLOOR
    masked = xt == n_codes
    j = torch.where(masked, 0, xt)
    diff = ~masked & (i != j)
    p_i, p_j = logp_i.clamp(min=cm.LOG_FLOOR).exp(), logp_j.clamp(min=cm.LOG_FLOOR).exp()
    lk = likelihoods(masked, c)
    q_j, q_0, u_j, u_0, u_m = lk["q_j"], lk["q_0"], lk["u_j"], lk["u_0"], lk["u_mask"]
    same = ~masked & ~diff
    q_i, u_i = torch.where(same, q_j, q_0), torch.where(same, u_j, u_0)
    ap, bp, gp = c.prev_keep, c.prev_replace, c.prev_mask
    q_c = torch.where(masked, c.cum_mask, c.cross_cum_replace + eps * c.cum_keep)
    u_c = torch.where(masked, c.mask, c.cross_replace + eps * c.keep)
    y_m = torch.where(masked, 1.0 / c.cum_mask, p_notj / q_0 + p_j / q_j) + eps + n_other * floor / q_c
    y_p = (
        1.0 / q_i
        + eps * torch.where(diff, 1.0 / q_j + (n_codes - 2) / q_0, (n_codes - 1) / q_0)
        + eps
        + n_other * eps / q_c
    )
    d_i = ap * p_i / q_i + bp * y_m
    d_j = ap * p_j / q_j + bp * y_m
    lm_i, f_i = _clamped_log(u_i * d_i)
    lm_j, f_j = _clamped_log(u_j * d_j)
    lm_m, f_m = _clamped_log(u_m * (gp * y_m + (1 - gp) * eps))
    lp_i, _ = _clamped_log(u_i * (ap / q_i + bp * y_p))
    lp_j, _ = _clamped_log(u_j * (ap * eps / q_j + bp * y_p))
    lp_m, _ = _clamped_log(u_m * (gp * y_p + (1 - gp) * eps))
    lw, _ = _clamped_log(u_0 * (ap * eps / q_0 + bp * y_p))
    d_c = ap * floor / q_c + c.cross_prev_replace * y_m
    lm_c, f_c = _clamped_log(u_c * d_c)
    lp_c, _ = _clamped_log(u_c * (ap * eps / q_c + c.cross_prev_replace * y_p))
    big_p_c = lp_c.exp()
    big_p_i, big_p_j, big_p_m, w = lp_i.exp(), lp_j.exp() * diff, lp_m.exp(), lw.exp()
    has_bulk = bp > 0
    in_s_not_j = masked | diff
    v_i = 1.0 / (1.0 + rho * p_i)
    off_log1p = sum_log1p - torch.where(in_s_not_j, torch.log1p(rho * p_i), 0.0)
    n_off = n_codes - torch.where(diff, 2, 1)
    bulk = w * (n_off * (lw - torch.log(u_0) - torch.log(bp * y_m)) - off_log1p)
    kl = (
        big_p_i * (lp_i - lm_i)
        + big_p_j * (lp_j - lm_j)
        + big_p_m * (lp_m - lm_m)
        + n_other * big_p_c * (lp_c - lm_c)
        + torch.where(has_bulk, bulk, 0.0)
    )
    nll = -lm_i
    aux = -logp_i.clamp(cm.LOG_FLOOR, 0.0)
    saved: dict[str, torch.Tensor] = {}
    if need_grad:
        off_v = sum_v - torch.where(masked, 0.0, 1.0) - torch.where(in_s_not_j, v_i, 0.0)
        off_pv = sum_pv - torch.where(in_s_not_j, p_i * v_i, 0.0)
        w_off = torch.where(has_bulk, w, 0.0)
        wt_i, wt_j, wt_m = big_p_i * f_i, big_p_j * f_j, big_p_m * f_m
        mask_term = gp / (gp * y_m + (1 - gp) * eps)
        h_kl = (
            bp * (wt_i / d_i + wt_j / d_j)
            + w_off / y_m * off_v
            + wt_m * mask_term
            + c.cross_prev_replace * n_other * big_p_c * f_c / d_c
        )
        sum_p_over_q = y_m - eps
        g_kl = -ap * (wt_i * p_i / (q_i * d_i) + wt_j * p_j / (q_j * d_j)) - w_off * rho * off_pv - h_kl * sum_p_over_q
        h_nll = f_i * bp / d_i
        g_nll = -f_i * ap * p_i / (q_i * d_i) - h_nll * sum_p_over_q
        saved = {
            "lse": lse,
            "rho": rho,
            "j": torch.where(masked, i, j),
            "a1_kl": -w_off * rho,
            "b_kl": -h_kl / q_0 - g_kl,
            "b_nll": -h_nll / q_0 - g_nll,
            "gi_kl": -(wt_i * ap / d_i + h_kl) / q_i - g_kl,
            "gi_nll": -(f_i * ap / d_i + h_nll) / q_i - g_nll,
            "gj_kl": -(wt_j * ap / d_j + h_kl) / q_j - g_kl,
            "gj_nll": -h_nll / q_j - g_nll,
            "c_aux": (logp_i >= cm.LOG_FLOOR).double(),
            "p_i": logp_i.exp(),
            "p_j": logp_j.exp(),
            "masked": masked,
        }
    return kl, nll, aux, saved


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
        stats = torch.empty(N_STATS, rows, dtype=torch.float64, device=z.device)
        blk = cm.block_k(k, block_k)
        _loss_stats_kernel[(rows,)](
            z, i_all, xt_all, coefs, stats,
            n, k, rows, int(n_other),
            z.stride(0), z.stride(1), z.stride(2),
            NEED_GRAD=need_grad, BLOCK_K=blk, num_warps=cm.num_warps(blk),
        )  # fmt: skip
        kl, nll, aux, saved = _row_terms(stats, i_all, xt_all, per_row(coef, n), k, int(n_other), need_grad)
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
        zero = torch.zeros(rows, dtype=torch.float64, device=z.device)
        gk = zero if g_kl is None else g_kl.reshape(-1).double()
        gn = zero if g_nll is None else g_nll.reshape(-1).double()
        ga = (zero if g_aux is None else g_aux.reshape(-1).double()) * sv["c_aux"]
        grad_i = sv["p_i"] * (gk * sv["gi_kl"] + gn * sv["gi_nll"] + ga) - ga
        grad_j = sv["p_j"] * (gk * sv["gj_kl"] + gn * sv["gj_nll"] + ga)
        grad_j = torch.where(sv["masked"], grad_i, grad_j)
        row_vals = torch.stack(
            [sv["lse"], sv["rho"], gk * sv["a1_kl"], gk * sv["b_kl"] + gn * sv["b_nll"] + ga, grad_i, grad_j]
        ).to(torch.float32)
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
    coef: StepCoefficients,
    n_other_codes: int = 0,
    *,
    block_k: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token (kl, dec_nll, aux), each (B, N) float32, differentiable w.r.t. the logits ``z`` (B, N, K)
    float32/bf16; same contract as :func:`vpdd.diffusion.fast.loss_terms` (``coef`` for t_prev = t-1)."""
    cm.check_logits(z, x_t)
    return LossFunction.apply(z, x0, x_t, coef, int(n_other_codes), block_k)
