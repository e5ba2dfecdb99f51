"""The VB loss terms of one modality in PyTorch (the CPU fallback and the oracle of
:mod:`vpdd_kernels.loss_triton`), and the one copy of the per-row float64 loss algebra both share.

The true posterior (one-hot x0 = i, floored at 1e-30) is one constant w off the set S = {i, j}, so with
the model posterior M_k = u_k D_k, D_k = ā' p_k/qt_k + β̄' Y (:mod:`vpdd_kernels.posterior`)

    KL = Σ_{k∈S∪MASK} P_k (log P_k - log M_k) + w·Σ_{k∉S} (log w - log u_0 - log(β̄'Y) - log1p(ρ p_k)),
    ρ = ā' / (qt_0 β̄' Y)

needs one K-wide pass for (max, Σe, Σ_{k≠j} e, z_i, z_j) and a second for Σ log1p(ρ p_k) (with the gradient,
also Σ 1/(1+ρp) and Σ p/(1+ρp)). Everything else is O(1) per row: :func:`row_terms`, fed by this module's
PyTorch passes or by the Triton kernel's statistics. The gradient w.r.t. z is p_k (g_k - G) with
g_k = -(1/qt_k)(W_k ā'/D_k + H) (kernels.md §1.7); off S it is p_k (a1 / (1 + ρ p_k) + b0) with per-row a1,
b0, so the backward is one streaming pass that saves only per-row scalars (the logits it reads are the
network's own output) and writes the gradient once. Log-probabilities are (z - max) - log Σe, so logits of
any magnitude give the gradients of their shifted copies; where the prediction's clamp at -70 holds
(log p < -70) the clamped classes pass no gradient, as in the reference.

The released code's q_pred also puts the *other* modality's replace mass on every token's other-modality
classes (algorithm.md §3.4). Those K_o classes are identical per token, so they enter as one closed-form
term (``n_other_codes``); with the paper's 1e-6 replace mass they are negligible, with a large one they are
not. Left out: the 1e-30/e^-70 floors of the *model* prediction inside the bulk sums (below 1e-20
relative), and the float64 log_softmax (float32 here, float64 for float64 input). Measured agreement:
docs/diffusion.md and tests/diffusion/test_equivalence.py.
"""

from __future__ import annotations

import torch

from vpdd_kernels._common import (
    EPS,
    FLOOR,
    LOG_FLOOR,
    StepCoefficients,
    compute_dtype,
    likelihoods,
    per_row,
    row_chunks,
    row_stats,
    rows_of,
)

# per-row statistics of the K-wide passes, in this order (float64)
STATS = ("zmax", "log_s", "p_notj", "logp_i", "logp_j", "rho", "sum_log1p", "sum_v", "sum_pv")


def _clamped_log(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(clamp(log x, -70, 0), in-range flag): the reference's clamp and where its gradient passes."""
    raw = torch.log(x)
    return raw.clamp(LOG_FLOOR, 0.0), ((raw >= LOG_FLOOR) & (raw <= 0.0)).to(x.dtype)


def _model_y(masked, p_notj, p_j, lk, c: StepCoefficients, n_other: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Y of the model posterior, q_c) per row; q_c is q(x_t | x0 = an other-modality class)."""
    q_c = torch.where(masked, c.cum_mask, c.cross_cum_replace + EPS * c.cum_keep)
    y = torch.where(masked, 1.0 / c.cum_mask, p_notj / lk["q_0"] + p_j / lk["q_j"])
    return y + EPS + n_other * FLOOR / q_c, q_c


def bulk_rho(masked, p_notj, logp_j, c: StepCoefficients, n_other: int) -> torch.Tensor:
    """ρ = ā' / (qt_0 β̄' Y) of the bulk sum Σ log1p(ρ p_k) (0 where there is no replace mass)."""
    lk = likelihoods(masked, c)
    y_m, _ = _model_y(masked, p_notj, logp_j.clamp(min=LOG_FLOOR).exp(), lk, c, n_other)
    has_bulk = c.prev_replace > 0
    return torch.where(has_bulk, c.prev_keep / (lk["q_0"] * torch.where(has_bulk, c.prev_replace, 1.0) * y_m), 0.0)


def row_terms(stats, i, xt, c: StepCoefficients, n_codes: int, n_other: int, need_grad: bool):
    """KL, decoder NLL and aux CE per row from the K-wide statistics (``STATS``), plus the per-row scalars
    the backward needs. All float64; ``i``, ``xt`` local indices (MASK = ``n_codes``)."""
    _, _, p_notj, logp_i, logp_j, rho, sum_log1p, sum_v, sum_pv = stats
    masked = xt == n_codes
    j = torch.where(masked, 0, xt)
    diff = ~masked & (i != j)
    same = ~masked & ~diff
    p_i, p_j = logp_i.clamp(min=LOG_FLOOR).exp(), logp_j.clamp(min=LOG_FLOOR).exp()
    lk = likelihoods(masked, c)
    q_j, q_0, u_j, u_0, u_m = lk["q_j"], lk["q_0"], lk["u_j"], lk["u_0"], lk["u_mask"]
    q_i, u_i = torch.where(same, q_j, q_0), torch.where(same, u_j, u_0)
    ap, bp, gp = c.prev_keep, c.prev_replace, c.prev_mask

    # the other modality's classes: prediction e^-70 (model) or 1e-30 (true), likelihoods q_c and u_c
    y_m, q_c = _model_y(masked, p_notj, p_j, lk, c, n_other)
    u_c = torch.where(masked, c.mask, c.cross_replace + EPS * c.keep)
    y_p = (
        1.0 / q_i
        + EPS * torch.where(diff, 1.0 / q_j + (n_codes - 2) / q_0, (n_codes - 1) / q_0)
        + EPS
        + n_other * EPS / q_c
    )
    d_i = ap * p_i / q_i + bp * y_m
    d_j = ap * p_j / q_j + bp * y_m
    lm_i, f_i = _clamped_log(u_i * d_i)
    lm_j, f_j = _clamped_log(u_j * d_j)
    lm_m, f_m = _clamped_log(u_m * (gp * y_m + (1 - gp) * EPS))
    lp_i, _ = _clamped_log(u_i * (ap / q_i + bp * y_p))
    lp_j, _ = _clamped_log(u_j * (ap * EPS / q_j + bp * y_p))
    lp_m, _ = _clamped_log(u_m * (gp * y_p + (1 - gp) * EPS))
    lw, _ = _clamped_log(u_0 * (ap * EPS / q_0 + bp * y_p))
    d_c = ap * FLOOR / q_c + c.cross_prev_replace * y_m
    lm_c, f_c = _clamped_log(u_c * d_c)
    lp_c, _ = _clamped_log(u_c * (ap * EPS / q_c + c.cross_prev_replace * y_p))
    big_p_c = lp_c.exp()
    big_p_i, big_p_j, big_p_m, w = lp_i.exp(), lp_j.exp() * diff, lp_m.exp(), lw.exp()
    has_bulk = bp > 0
    in_s_not_j = masked | diff  # i is a special class that the bulk pass counted
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
    aux = -logp_i.clamp(LOG_FLOOR, 0.0)
    if not need_grad:
        return kl, nll, aux, {}
    # the prediction's clamp at -70 passes no gradient: c_i for p_i's own term; p_j also enters Y on
    # unmasked rows (for x_t = x0 that is p_i again), p_i of a replaced token enters Y through the bulk
    c_i, c_j = (logp_i >= LOG_FLOOR).double(), (logp_j >= LOG_FLOOR).double()
    cy_i = torch.where(same, c_j, 1.0)
    sum_p_over_q = y_m - EPS - torch.where(masked, 0.0, (1 - c_j) * p_j / q_j)
    off_v = sum_v - torch.where(masked, 0.0, 1.0) - torch.where(in_s_not_j, v_i, 0.0)
    off_pv = sum_pv - torch.where(in_s_not_j, p_i * v_i, 0.0)
    w_off = torch.where(has_bulk, w, 0.0)
    wt_i, wt_j, wt_m = big_p_i * f_i, big_p_j * f_j, big_p_m * f_m
    mask_term = gp / (gp * y_m + (1 - gp) * EPS)
    h_kl = (
        bp * (wt_i / d_i + wt_j / d_j)
        + w_off / y_m * off_v
        + wt_m * mask_term
        + c.cross_prev_replace * n_other * big_p_c * f_c / d_c
    )
    g_kl = (
        -ap * (c_i * wt_i * p_i / (q_i * d_i) + c_j * wt_j * p_j / (q_j * d_j))
        - w_off * rho * off_pv
        - h_kl * sum_p_over_q
    )
    h_nll = f_i * bp / d_i
    g_nll = -c_i * f_i * ap * p_i / (q_i * d_i) - h_nll * sum_p_over_q
    saved = {
        "zmax": stats[0],
        "log_s": stats[1],
        "rho": rho,
        "j": torch.where(masked, i, j),
        "a1_kl": -w_off * rho,
        "b_kl": -h_kl / q_0 - g_kl,
        "b_nll": -h_nll / q_0 - g_nll,
        "gi_kl": -(c_i * wt_i * ap / d_i + cy_i * h_kl) / q_i - g_kl,
        "gi_nll": -(c_i * f_i * ap / d_i + cy_i * h_nll) / q_i - g_nll,
        "gj_kl": -c_j * (wt_j * ap / d_j + h_kl) / q_j - g_kl,
        "gj_nll": -c_j * h_nll / q_j - g_nll,
        "c_aux": c_i,
        "p_i": logp_i.exp(),
        "p_j": logp_j.exp(),
        "masked": masked,
    }
    return kl, nll, aux, saved


def row_gradients(sv: dict[str, torch.Tensor], g_kl, g_nll, g_aux) -> tuple[torch.Tensor, ...]:
    """Upstream gradients (None or (B, N)) folded into the per-row (a1, b0, grad at x0, grad at x_t)."""
    zero = torch.zeros_like(sv["rho"])
    gk, gn, ga = (zero if g is None else g.reshape(-1).double() for g in (g_kl, g_nll, g_aux))
    ga = ga * sv["c_aux"]
    grad_i = sv["p_i"] * (gk * sv["gi_kl"] + gn * sv["gi_nll"] + ga) - ga
    grad_j = sv["p_j"] * (gk * sv["gj_kl"] + gn * sv["gj_nll"] + ga)
    return gk * sv["a1_kl"], gk * sv["b_kl"] + gn * sv["b_nll"] + ga, grad_i, torch.where(sv["masked"], grad_i, grad_j)


def _loss_rows(zc, i, xt, c: StepCoefficients, n_codes: int, n_other: int, need_grad: bool):
    """The two K-wide passes over a chunk of rows, then :func:`row_terms`."""
    masked = xt == n_codes
    j = torch.where(masked, 0, xt)
    e, s, _, s_notj, zmax = row_stats(zc, j, masked)
    log_s = s.double().log()
    logp_i = (zc.gather(1, i.unsqueeze(1)).squeeze(1).to(e.dtype) - zmax).double() - log_s
    logp_j = (zc.gather(1, j.unsqueeze(1)).squeeze(1).to(e.dtype) - zmax).double() - log_s
    p_notj = (s_notj / s).double()
    rho = bulk_rho(masked, p_notj, logp_j, c, n_other)
    # bulk pass: Σ_{k≠j} log1p(ρ p_k) (and for the gradient Σ 1/(1+ρp), Σ p/(1+ρp)); p = e/s
    x = e * (rho / s.double()).to(e.dtype).unsqueeze(1)
    x.log1p_()
    sums = [x.sum(1).double(), torch.zeros_like(rho), torch.zeros_like(rho)]
    if need_grad:
        x.neg_().exp_()  # v = 1/(1+ρp) = exp(-log1p(ρp))
        sums[1:] = x.sum(1).double(), torch.linalg.vecdot(x, e).double() / s.double()
    stats = (zmax.double(), log_s, p_notj, logp_i, logp_j, rho, *sums)
    return row_terms(stats, i, xt, c, n_codes, n_other, need_grad)


class _LossFunction(torch.autograd.Function):
    """Per-token (kl, nll, aux) of one modality with a streaming backward (no saved (B, N, K) tensors)."""

    @staticmethod
    def forward(ctx, z, x0, x_t, coef_rows, n_codes, n_other):  # type: ignore[override]
        b, n, k = z.shape
        z2, i_all, xt_all = z.detach().reshape(b * n, k), x0.reshape(-1), x_t.reshape(-1)
        need_grad = z.requires_grad
        outs = torch.empty(3, b * n, dtype=torch.float64, device=z.device)
        saved_parts: list[dict[str, torch.Tensor]] = []
        for rows in row_chunks(b * n, k):
            c = rows_of(coef_rows, rows)
            kl, nll, aux, saved = _loss_rows(z2[rows], i_all[rows], xt_all[rows], c, n_codes, n_other, need_grad)
            outs[0, rows], outs[1, rows], outs[2, rows] = kl, nll, aux
            saved_parts.append(saved)
        if need_grad:
            ctx.saved = {key: torch.cat([part[key] for part in saved_parts]) for key in saved_parts[0]}
            ctx.save_for_backward(z, x0)
        out = outs.to(compute_dtype(z)).reshape(3, b, n)
        return out[0], out[1], out[2]

    @staticmethod
    def backward(ctx, g_kl, g_nll, g_aux):  # type: ignore[override]
        z, x0 = ctx.saved_tensors
        sv = ctx.saved
        b, n, k = z.shape
        cdt = compute_dtype(z)
        a1, b0, grad_i, grad_j = (v.to(cdt) for v in row_gradients(sv, g_kl, g_nll, g_aux))
        zmax, log_s, rho = (sv[key].to(cdt) for key in ("zmax", "log_s", "rho"))
        z2, i_all = z.detach().reshape(b * n, k), x0.reshape(-1)
        grad = torch.empty(b * n, k, dtype=cdt, device=z.device)
        for rows in row_chunks(b * n, k):
            p = torch.sub(z2[rows].to(cdt), zmax[rows].unsqueeze(1)).sub_(log_s[rows].unsqueeze(1)).exp_()
            out = grad[rows]
            torch.mul(p, rho[rows].unsqueeze(1), out=out)
            out.add_(1.0).reciprocal_()
            torch.addcmul(b0[rows].unsqueeze(1), out, a1[rows].unsqueeze(1), out=out)
            out.mul_(p)
            out.scatter_(1, sv["j"][rows].unsqueeze(1), grad_j[rows].unsqueeze(1))
            out.scatter_(1, i_all[rows].unsqueeze(1), grad_i[rows].unsqueeze(1))
        return grad.reshape(b, n, k).to(z.dtype), None, None, None, None, None


def loss_terms(
    z: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, coef: StepCoefficients, n_other_codes: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token (kl, dec_nll, aux) of one modality, each (B, N), differentiable w.r.t. the logits z.

    ``x0`` holds local codes in [0, K), ``x_t`` local codes or MASK = K; ``coef`` is for t_prev = t - 1.
    ``n_other_codes`` = K of the other modality reproduces the released code's cross-modality rows
    (algorithm.md §3.4) exactly; 0 leaves them out (a per-modality chain, equal for the paper's schedule).
    """
    b, n, k = z.shape
    return _LossFunction.apply(z, x0, x_t, per_row(coef, n), k, int(n_other_codes))
