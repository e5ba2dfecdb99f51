"""The posterior log p_θ(x_{t'} | x_t) of one modality in PyTorch: the CPU fallback and the oracle of
:mod:`vpdd_kernels.posterior_triton`.

With p = softmax(z) and, per token, x_t = j (or MASK), q(x_t | x0 = k) = qt_k and q(x_t | x_{t'} = k) = u_k,
the released code's posterior is, for every class k of the token's modality (kernels.md §1.5),

    out_k = u_k · (ā'·p_k/qt_k + β̄'·Y),   Y = Σ_k p_k/qt_k + 1e-30
    out_MASK = u_MASK · (γ̄'·Y + (1-γ̄')·1e-30)                            (then clamped in log to [-70, 0])

where primes are cumulative values at t' = t_prev. Only k = j differs from the bulk (qt_j = ā+β̄,
u_j = α+β); a masked token has qt = γ̄, u = γ everywhere. So one log-sum-exp pass gives a whole row.
"""

from __future__ import annotations

import torch

from vpdd_kernels._common import (
    EPS,
    FLOOR,
    LOG_FLOOR,
    StepCoefficients,
    kept_sorted,
    likelihoods,
    per_row,
    row_chunks,
    row_stats,
    rows_of,
)


def truncation_keep(p: torch.Tensor, r: float) -> torch.Tensor:
    """(R, K) bool: the tie-inclusive top-r set of probabilities ``p`` (see :func:`kept_sorted`)."""
    sorted_p, order = torch.sort(p, dim=1, descending=True)
    return torch.empty_like(sorted_p, dtype=torch.bool).scatter_(1, order, kept_sorted(sorted_p, r))


def posterior_log_probs(
    z: torch.Tensor, x_t: torch.Tensor, coef: StepCoefficients, truncation_r: float | None = None
) -> torch.Tensor:
    """(B, N, K+1) log p_θ(x_{t'} | x_t) over the modality's codes and MASK (last), clamped to [-70, 0].

    ``z`` (B, N, K) logits, ``x_t`` (B, N) local indices (MASK = K), ``coef`` for the step t' → t. With
    ``truncation_r`` the prediction is top-r truncated first (tie-inclusive; a per-row sort). The reverse
    step does not call this: it never forms the posterior.
    """
    b, n, k = z.shape
    z2, xt = z.reshape(b * n, k), x_t.reshape(-1)
    cf = per_row(coef, n)
    out = torch.empty(b * n, k + 1, dtype=torch.float32, device=z.device)
    for rows in row_chunks(b * n, k):
        masked = xt[rows] == k
        j = torch.where(masked, 0, xt[rows])
        lse = row_stats(z2[rows], j, masked).lse
        p = torch.exp(z2[rows].float() - lse.unsqueeze(1)).clamp_(min=FLOOR)
        if truncation_r is not None and truncation_r < 1:
            p = torch.where(truncation_keep(p, truncation_r), p, FLOOR)
        c = rows_of(cf, rows)
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
        at_j = torch.where(masked, block[:, :k].gather(1, jj).squeeze(1).double(), at_j)
        block[:, :k].scatter_(1, jj, at_j.float().unsqueeze(1))
        block[:, k] = torch.log(lk["u_mask"] * (c.prev_mask * y + (1 - c.prev_mask) * EPS)).float()
        block.clamp_(LOG_FLOOR, 0.0)
    return out.reshape(b, n, k + 1)
