"""The memory-light PyTorch path: per-token closed forms of noising, posterior and loss (kernels.md §1.5-§2).

Everything here works on **one modality at a time** in its local vocabulary: logits ``z`` (B, N, K) in the
canonical class-contiguous layout, codes ``[0, K)`` and MASK written as ``K``; schedule values come in as
per-sample :class:`~vpdd.diffusion.schedule.StepCoefficients`. These are the signatures a Triton kernel
replaces (``q_sample``, ``posterior_log_probs``, ``loss_terms``; ``reverse_step`` is in
:mod:`vpdd.diffusion.fast_sampling`).

The maths. With p = softmax(z) and, per token, x_t = j (or MASK) and q(x_t | x0 = k) = qt_k, the released
code's posterior is, for every class k of the token's modality,

    out_k = u_k · D_k,   D_k = ā'·p_k/qt_k + β̄'·Y,   Y = Σ_k p_k/qt_k + 1e-30
    out_MASK = u_MASK · (γ̄'·Y + (1-γ̄')·1e-30)                            (then clamped in log to [-70, 0])

where u_k is the one-step (or strided) likelihood q(x_t | x_{t'} = k) and primes are cumulative values at
t' = t_prev. Only k = j differs from the bulk (qt_j = ā+β̄, u_j = α+β); a masked token has qt = γ̄, u = γ
everywhere. So one log-sum-exp pass gives the posterior of a whole row.

The true posterior (one-hot x0 = i, floored at 1e-30) is one constant w off the set S = {i, j}, so

    KL = Σ_{k∈S∪MASK} P_k (log P_k - log M_k) + w·Σ_{k∉S} (log w - log u_0 - log(β̄'Y) - log1p(ρ p_k)),
    ρ = ā' / (qt_0 β̄' Y)

needs a second per-row reduction Σ log1p(ρ p_k). The gradient w.r.t. z is p_k (g_k - G) with
g_k = -(1/qt_k)(W_k ā'/D_k + H) (kernels.md §1.7); off S it is p_k (a1 / (1 + ρ p_k) + b0) with per-row
a1, b0, so the backward is one streaming pass. :class:`_LossFunction` saves only per-row scalars (the
logits it reads are the network's own output), writes the gradient once, and every pass is chunked over
rows so temporaries stay at ``CHUNK_ELEMENTS`` floats.

The released code's q_pred also puts the *other* modality's replace mass on every token's other-modality
classes (algorithm.md §3.4). Those K_o classes are identical per token, so ``loss_terms`` adds them as one
closed-form term (``n_other_codes``); with the paper's 1e-6 replace mass they are negligible, with a large
replace mass they are not. What is left out: the 1e-30/e^-70 floors of the *model* prediction inside the
bulk sums (below 1e-20 relative), and the float64 log_softmax (float32 here, float64 for float64 input).
Measured agreement is in docs/diffusion.md and tests/diffusion/test_equivalence.py.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from vpdd.diffusion.schedule import StepCoefficients

EPS = 1e-30  # the one-hot floor of the released code
LOG_FLOOR = -70.0
FLOOR = math.exp(LOG_FLOOR)  # the clamped probability of a class the prediction rules out
CHUNK_ELEMENTS = 1 << 18  # floats per temporary in the row-chunked passes (1 MiB in float32)


def row_chunks(n_rows: int, n_cols: int) -> list[slice]:
    step = max(1, CHUNK_ELEMENTS // max(n_cols, 1))
    return [slice(s, min(s + step, n_rows)) for s in range(0, n_rows, step)]


def per_row(coef: StepCoefficients, tokens: int) -> StepCoefficients:
    """(B,) coefficients -> (B*N,) rows."""
    return StepCoefficients(*(v.repeat_interleave(tokens) for v in coef))


def likelihoods(masked: torch.Tensor, cf: StepCoefficients) -> dict[str, torch.Tensor]:
    """Per-row float64 q(x_t | x0 = k) and q(x_t | x_{t'} = k): the value at k = j and the bulk value."""
    q_j = torch.where(masked, cf.cum_mask, cf.cum_keep + cf.cum_replace)
    q_0 = torch.where(masked, cf.cum_mask, cf.cum_replace + EPS * cf.cum_keep)
    u_j = torch.where(masked, cf.mask, cf.keep + cf.replace)
    u_0 = torch.where(masked, cf.mask, cf.replace + EPS * cf.keep)
    u_mask = torch.where(masked, torch.ones_like(q_j), torch.full_like(q_j, EPS))
    return {"q_j": q_j, "q_0": q_0, "u_j": u_j, "u_0": u_0, "u_mask": u_mask}


def _clamped_log(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(clamp(log x, -70, 0), in-range flag): the reference's clamp and where its gradient passes."""
    raw = torch.log(x)
    return raw.clamp(LOG_FLOOR, 0.0), ((raw >= LOG_FLOOR) & (raw <= 0.0)).to(x.dtype)


class RowStats(NamedTuple):
    e: torch.Tensor  # (R, K) exp(z - max) with e_j zeroed on unmasked rows: a chunk temporary to reuse
    s: torch.Tensor  # Σ_k e_k, e_j included
    lse: torch.Tensor  # the row log-sum-exp
    s_notj: torch.Tensor  # Σ_{k≠j} e_k (all k on masked rows), summed without cancellation
    zmax: torch.Tensor


def compute_dtype(z: torch.Tensor) -> torch.dtype:
    """float64 stays float64 (for gradcheck); everything else is computed in float32."""
    return torch.float64 if z.dtype == torch.float64 else torch.float32


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


def truncation_keep(p: torch.Tensor, truncation_r: float) -> torch.Tensor:
    """(R, K) bool: VQ-Diffusion's top-r set (mass ranked above a class < r; the top-1 always kept)."""
    sorted_p, order = torch.sort(p, dim=1, descending=True)
    below = sorted_p.cumsum(1)[:, :-1] < truncation_r
    keep_sorted = torch.cat((torch.ones_like(below[:, :1]), below), dim=1)
    return torch.empty_like(keep_sorted).scatter_(1, order, keep_sorted)


# ----------------------------------------------------------------------------------------------- noising
def q_sample(
    x0: torch.Tensor, coef: StepCoefficients, n_codes: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Forward noising of local indices x0 (B, N) at the coefficients' t: O(B·N), two draws per token.

    A clean code i becomes MASK with probability γ̄, stays with ā, and is otherwise replaced by a uniform
    code (which may be i again, giving i its β̄); float64 uniforms resolve the 1e-6 replace mass. A MASK
    input stays MASK with probability 1/(1 + K β̄) as in the reference.
    """
    b, n = x0.shape
    u = torch.rand((2, b, n), dtype=torch.float64, generator=generator, device=x0.device)
    keep, mask = coef.cum_keep.unsqueeze(1), coef.cum_mask.unsqueeze(1)
    code = (u[1] * n_codes).long().clamp_(max=n_codes - 1)
    to_mask = u[0] < mask
    kept = (u[0] >= mask) & (u[0] < mask + keep)
    out = torch.where(to_mask, n_codes, torch.where(kept, x0, code))
    was_mask = x0 == n_codes
    stay_mask = u[0] < 1.0 / (1.0 + n_codes * coef.cum_replace.unsqueeze(1))
    return torch.where(was_mask, torch.where(stay_mask, n_codes, code), out)


# --------------------------------------------------------------------------------------------- posterior
def posterior_log_probs(
    z: torch.Tensor, x_t: torch.Tensor, coef: StepCoefficients, truncation_r: float | None = None
) -> torch.Tensor:
    """(B, N, K+1) log p_θ(x_{t'} | x_t) over the modality's codes and MASK (last), clamped to [-70, 0].

    With ``truncation_r`` the prediction is top-r truncated first (a per-row sort; this function writes
    the whole posterior anyway). The reverse step does not call this: it never forms the posterior.
    """
    b, n, k = z.shape
    z2, xt = z.reshape(b * n, k), x_t.reshape(-1)
    cf = per_row(coef, n)
    out = torch.empty(b * n, k + 1, dtype=torch.float32, device=z.device)
    for rows in row_chunks(b * n, k):
        masked = xt[rows] == k
        j = torch.where(masked, 0, xt[rows])
        lse = row_stats(z2[rows], j, masked).lse
        p = torch.exp(z2[rows].float() - lse.unsqueeze(1)).clamp_(min=math.exp(LOG_FLOOR))
        if truncation_r is not None and truncation_r < 1:
            p = torch.where(truncation_keep(p, truncation_r), p, math.exp(LOG_FLOOR))
        c = StepCoefficients(*(v[rows] for v in cf))
        lk = likelihoods(masked, c)
        jj = j.unsqueeze(1)
        p_j = p.gather(1, jj)
        p.scatter_(1, jj, torch.where(masked.unsqueeze(1), p_j, 0.0))  # Σ_{k≠j} p̃ without cancellation
        p_notj = p.sum(1, dtype=torch.float64)
        p.scatter_(1, jj, p_j)
        p_j = p_j.squeeze(1).double()
        y = torch.where(masked, p_notj / lk["q_0"], p_notj / lk["q_0"] + p_j / lk["q_j"]) + EPS
        base = (c.prev_replace * y).float().unsqueeze(1)
        slope = (c.prev_keep / lk["q_0"]).float().unsqueeze(1)
        block = out[rows]
        torch.log(torch.addcmul(base, slope, p), out=block[:, :k])
        block[:, :k] += lk["u_0"].log().float().unsqueeze(1)
        at_j = torch.log(lk["u_j"] * (c.prev_keep * p_j / lk["q_j"] + c.prev_replace * y))
        block[:, :k].scatter_(
            1,
            j.unsqueeze(1),
            torch.where(masked, block[:, :k].gather(1, j.unsqueeze(1)).squeeze(1).double(), at_j).float().unsqueeze(1),
        )
        block[:, k] = torch.log(lk["u_mask"] * (c.prev_mask * y + (1 - c.prev_mask) * EPS)).float()
        block.clamp_(LOG_FLOOR, 0.0)
    return out.reshape(b, n, k + 1)


# -------------------------------------------------------------------------------------------------- loss
def _loss_rows(
    zc: torch.Tensor,
    i: torch.Tensor,
    xt: torch.Tensor,
    c: StepCoefficients,
    n_codes: int,
    n_other: int,
    need_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """KL, decoder NLL and aux CE for a chunk of rows, plus the per-row scalars the backward needs."""
    masked = xt == n_codes
    j = torch.where(masked, 0, xt)
    diff = ~masked & (i != j)
    e, s, lse, s_notj, _ = row_stats(zc, j, masked)
    zf_i = zc.gather(1, i.unsqueeze(1)).squeeze(1).to(e.dtype)
    zf_j = zc.gather(1, j.unsqueeze(1)).squeeze(1).to(e.dtype)
    logp_i, logp_j = (zf_i - lse).double(), (zf_j - lse).double()
    p_i, p_j = logp_i.clamp(min=LOG_FLOOR).exp(), logp_j.clamp(min=LOG_FLOOR).exp()
    lk = likelihoods(masked, c)
    q_j, q_0, u_j, u_0, u_m = lk["q_j"], lk["q_0"], lk["u_j"], lk["u_0"], lk["u_mask"]
    same = ~masked & ~diff
    q_i, u_i = torch.where(same, q_j, q_0), torch.where(same, u_j, u_0)
    ap, bp, gp = c.prev_keep, c.prev_replace, c.prev_mask

    # the other modality's classes: prediction e^-70 (model) or 1e-30 (true), likelihoods q_c and u_c
    q_c = torch.where(masked, c.cum_mask, c.cross_cum_replace + EPS * c.cum_keep)
    u_c = torch.where(masked, c.mask, c.cross_replace + EPS * c.keep)
    y_m = torch.where(masked, 1.0 / c.cum_mask, (s_notj / s).double() / q_0 + p_j / q_j) + EPS + n_other * FLOOR / q_c
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
    rho = torch.where(has_bulk, ap / (q_0 * bp * y_m), 0.0)

    # bulk pass: Σ_{k≠j} log1p(ρ p_k) (and for the gradient Σ 1/(1+ρp), Σ p/(1+ρp)); p = e/s
    x = e * (rho / s.double()).to(e.dtype).unsqueeze(1)
    x.log1p_()
    sum_log1p = x.sum(1).double()
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
    saved: dict[str, torch.Tensor] = {}
    if need_grad:
        x.neg_().exp_()  # v = 1/(1+ρp) = exp(-log1p(ρp))
        sum_v = x.sum(1).double()
        sum_pv = torch.linalg.vecdot(x, e).double() / s.double()
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
        sum_p_over_q = y_m - EPS
        g_kl = -ap * (wt_i * p_i / (q_i * d_i) + wt_j * p_j / (q_j * d_j)) - w_off * rho * off_pv - h_kl * sum_p_over_q
        h_nll = f_i * bp / d_i
        g_nll = -f_i * ap * p_i / (q_i * d_i) - h_nll * sum_p_over_q
        saved = {
            "lse": lse,
            "rho": rho.to(e.dtype),
            "j": torch.where(masked, i, j),
            "a1_kl": -w_off * rho,
            "b_kl": -h_kl / q_0 - g_kl,
            "b_nll": -h_nll / q_0 - g_nll,
            "gi_kl": -(wt_i * ap / d_i + h_kl) / q_i - g_kl,
            "gi_nll": -(f_i * ap / d_i + h_nll) / q_i - g_nll,
            "gj_kl": -(wt_j * ap / d_j + h_kl) / q_j - g_kl,
            "gj_nll": -h_nll / q_j - g_nll,
            "c_aux": (logp_i >= LOG_FLOOR).double(),
            "p_i": logp_i.exp(),
            "p_j": logp_j.exp(),
            "masked": masked,
        }
    return kl, nll, aux, saved


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
            c = StepCoefficients(*(v[rows] for v in coef_rows))
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
        zero = torch.zeros(b * n, dtype=torch.float64, device=z.device)
        gk = zero if g_kl is None else g_kl.reshape(-1).double()
        gn = zero if g_nll is None else g_nll.reshape(-1).double()
        ga = (zero if g_aux is None else g_aux.reshape(-1).double()) * sv["c_aux"]
        cdt = compute_dtype(z)
        a1 = (gk * sv["a1_kl"]).to(cdt)
        b0 = (gk * sv["b_kl"] + gn * sv["b_nll"] + ga).to(cdt)
        grad_i = (sv["p_i"] * (gk * sv["gi_kl"] + gn * sv["gi_nll"] + ga) - ga).to(cdt)
        grad_j = (sv["p_j"] * (gk * sv["gj_kl"] + gn * sv["gj_nll"] + ga)).to(cdt)
        grad_j = torch.where(sv["masked"], grad_i, grad_j)
        z2, i_all = z.detach().reshape(b * n, k), x0.reshape(-1)
        grad = torch.empty(b * n, k, dtype=cdt, device=z.device)
        for rows in row_chunks(b * n, k):
            p = torch.sub(z2[rows].to(cdt), sv["lse"][rows].unsqueeze(1)).exp_()
            out = grad[rows]
            torch.mul(p, sv["rho"][rows].unsqueeze(1), out=out)
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
