"""Noising and one reverse step of one modality in PyTorch: the CPU fallback and the oracle of
:mod:`vpdd_kernels.sampling_triton`. Both are exact in distribution and work on indices.

``q_sample`` is the O(1)-per-token closed form of kernels.md §1.6. ``reverse_step`` never forms the
posterior: for a token of one modality the released code samples x_{t'} ∝ exp(posterior) over the
modality's codes and MASK (the other modality is masked to -1e4), and by :mod:`vpdd_kernels.posterior` that
posterior is a mixture of at most three parts, with p̃ the top-r truncated prediction (kept classes p_k,
dropped ones e^-70):

* masked x_t:  MASK (weight γ̄'), a draw from p̃ (γ·ā'), a uniform code (γ·(1-ā'-γ̄')). The kept mass S
  cancels, so choosing the part needs no truncation at all.
* x_t = j:     stay at j (u_j(ā' p̃_j/q_j + β̄'Y)), a draw from p̃ without j (u_0 ā' (S - p̃_j)/q_0),
  a uniform code ≠ j ((K-1) u_0 β̄' Y), with Y = (S - p̃_j)/q_0 + p̃_j/q_j.

The part is chosen with one float64 uniform per token. For x_t = j the thresholds depend on S and on
whether j survives truncation; both are bracketed from the row's max and p_j (S ∈ [r, r + p_max], only the
argmax survives when p_max ≥ r, any class with p > 1 - r survives; a row of equal logits keeps every class),
and only rows whose uniform falls inside the bracket are sorted to get the exact kept set. A draw from p̃
is by rejection (below), or an inverse-CDF search over the sorted kept classes of a row sorted anyway.

Truncation is tie-inclusive everywhere (:func:`vpdd_kernels._common.kept_sorted`): a class is kept iff the
mass strictly above it is < r. The bracket assumes a unique class at the truncation boundary except in
rows of equal logits; a large group of exactly tied logits elsewhere (possible with bfloat16 logits) may
pick a part from a slightly wrong S.

Memory: one chunked pass over the logits for (max, log-sum-exp, p_j, Σ_{k≠j} p) plus a sort of the selected
rows in chunks; nothing (B, N, K)-sized is written. Left out of the mixture (≤ 1e-20 of the mass in the
reference): MASK from an unmasked token, the e^-70 floor of dropped classes, the clamp of log-posteriors
at 0.
"""

from __future__ import annotations

import torch

from vpdd_kernels._common import (
    EPS,
    StepCoefficients,
    kept_sorted,
    likelihoods,
    per_row,
    row_chunks,
    row_stats,
    rows_of,
)

_MASK, _STAY, _PRED, _UNIF = 0, 1, 2, 3
_SLACK = 1e-4  # widens the S bracket so float32 sums can never fall outside it
# The rejection draw accepts a row with probability >= its kept mass; rows still rejected after this many
# rounds (never seen with valid inputs) take the exact sorted draw instead, so no input makes a step spin.
MAX_REJECTION_ROUNDS = 256


def check_truncation_r(truncation_r: float | None) -> float | None:
    """``truncation_r`` as the samplers use it: None (or a value >= 1, the documented "off") disables top-r
    truncation; otherwise it must be a finite number in (0, 1). Anything else is a ValueError."""
    if truncation_r is None:
        return None
    try:
        r = float(truncation_r)
    except (TypeError, ValueError):
        raise ValueError(f"truncation_r={truncation_r!r}: expected a number in (0, 1], 1.0 = off") from None
    if not r > 0 or r != r or r == float("inf"):
        raise ValueError(f"truncation_r={truncation_r!r}: expected a number in (0, 1] (1.0 = off); "
                         "r <= 0 keeps no class, so the truncated draw could never accept")
    return None if r >= 1 else r


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


def _unmasked_thresholds(
    sx: torch.Tensor, pj: torch.Tensor, lk: dict[str, torch.Tensor], c: StepCoefficients, n_codes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(P(stay), P(stay or draw from p̃)) of an unmasked token given sx = Σ_{kept, k≠j} p and p̃_j."""
    y = sx / lk["q_0"] + pj / lk["q_j"] + EPS
    w_stay = lk["u_j"] * (c.prev_keep * pj / lk["q_j"] + c.prev_replace * y)
    w_pred = lk["u_0"] * c.prev_keep * sx / lk["q_0"]
    w_unif = (n_codes - 1) * lk["u_0"] * c.prev_replace * y
    total = w_stay + w_pred + w_unif
    return w_stay / total, (w_stay + w_pred) / total


def _bracket(p_j, p_notj, p_max, j_is_max, flat, r, lk, c, n_codes):
    """(c1_lo, c1_hi, c2_lo, c2_hi) for every unmasked row; lo == hi where the kept set is known (no
    truncation, or a ``flat`` row of equal logits, which keeps every class)."""
    c1, c2 = _unmasked_thresholds(p_notj, p_j, lk, c, n_codes)
    if r is None:
        return c1, c1, c2, c2
    zero = torch.zeros_like(p_j)
    s_lo = torch.full_like(p_j, r - _SLACK)
    s_hi = torch.clamp(r + p_max, max=1.0) + _SLACK
    kept_known = j_is_max | (p_j > 1 - r + _SLACK)
    cands = [  # (sx, p̃_j) corners: j kept with S at either end, j dropped with S at either end
        (torch.clamp(s_lo - p_j, min=0.0), p_j),
        (s_hi - p_j, p_j),
        (torch.where(kept_known, torch.clamp(s_lo - p_j, min=0.0), s_lo), torch.where(kept_known, p_j, zero)),
        (torch.where(kept_known, s_hi - p_j, s_hi), torch.where(kept_known, p_j, zero)),
    ]
    c1s, c2s = zip(*(_unmasked_thresholds(sx, pj, lk, c, n_codes) for sx, pj in cands), strict=True)
    c1s, c2s = torch.stack(c1s), torch.stack(c2s)
    c1_lo, c1_hi, c2_lo, c2_hi = c1s.amin(0), c1s.amax(0), c2s.amin(0), c2s.amax(0)
    # only the argmax survives: everything is known exactly
    single = p_max > r + _SLACK
    c1x, c2x = _unmasked_thresholds(
        torch.where(j_is_max, zero, p_max), torch.where(j_is_max, p_j, zero), lk, c, n_codes
    )
    c1x, c2x = torch.where(flat, c1, c1x), torch.where(flat, c2, c2x)
    single = single | flat
    return (
        torch.where(single, c1x, c1_lo),
        torch.where(single, c1x, c1_hi),
        torch.where(single, c2x, c2_lo),
        torch.where(single, c2x, c2_hi),
    )


def _inverse_cdf(wts: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One draw per row ∝ wts (R, K) (need not be normalised) from uniforms u (R,) float64."""
    cw = wts.cumsum(1)
    target = (u * cw[:, -1].double()).to(cw.dtype).unsqueeze(1)
    return torch.searchsorted(cw, target, right=True).clamp_(max=wts.shape[1] - 1).squeeze(1)


def _exact_kept_set(z_rows, lse, j, masked, u, r):
    """Sort the rows: exact Σ_{kept, k≠j} p, whether j is kept, and a draw from the kept set without j."""
    p = torch.exp(z_rows.to(lse.dtype) - lse.unsqueeze(1))
    wts, order = torch.sort(p, dim=1, descending=True)
    keep = kept_sorted(wts, r)
    is_j = order == j.unsqueeze(1)
    kept_j = (keep & is_j).any(1)
    wts.mul_(keep).masked_fill_(is_j & ~masked.unsqueeze(1), 0.0)
    sample = order.gather(1, _inverse_cdf(wts, u).unsqueeze(1)).squeeze(1)
    return sample, wts.sum(1).double(), kept_j


def _draw_truncated(z_rows, lse, j, masked, u, r, generator):
    """A draw from the top-r kept set (without j on unmasked rows) by rejection, with no sort.

    Propose k ∝ p (j excluded) by inverse CDF in class order and accept iff the mass strictly above p_k is
    < r, which is the reference's keep rule; the acceptance rate is the kept mass (≥ r), so about 1/r
    proposals per row. Rejected rows redraw from ``generator``."""
    p = torch.exp(z_rows.to(lse.dtype) - lse.unsqueeze(1))
    jj = j.unsqueeze(1)
    p_j = p.gather(1, jj).squeeze(1)
    excluded = torch.where(masked, 0.0, p_j)  # j counts in the ranking but is never proposed
    p.scatter_(1, jj, torch.where(masked, p_j, 0.0).unsqueeze(1))
    sample = torch.empty_like(j)
    todo = None  # all rows in the first round
    for _ in range(MAX_REJECTION_ROUNDS):
        rows = p if todo is None else p[todo]
        prop = _inverse_cdf(rows, u)
        if r is None:
            sample[:] = prop
            break
        p_k = rows.gather(1, prop.unsqueeze(1))
        ex = excluded if todo is None else excluded[todo]
        above = torch.where(rows > p_k, rows, 0.0).sum(1) + torch.where(ex > p_k.squeeze(1), ex, 0.0)
        ok = above < r
        ids = torch.arange(p.shape[0], device=p.device) if todo is None else todo
        sample[ids[ok]] = prop[ok]
        todo = ids[~ok]
        if todo.numel() == 0:
            break
        u = torch.rand(todo.numel(), dtype=torch.float64, generator=generator, device=p.device)
    else:  # bounded: the rows left take the exact draw from their sorted kept set
        sample[todo] = _exact_kept_set(z_rows[todo], lse[todo], j[todo], masked[todo], u, r)[0]
    return sample


def reverse_step(
    z: torch.Tensor,
    x_t: torch.Tensor,
    coef: StepCoefficients,
    truncation_r: float | None = None,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw x_{t'} (local indices, MASK = K) from p_θ(x_{t'} | x_t) for one modality.

    ``z`` (B, N, K) logits, ``x_t`` (B, N) local indices, ``coef`` for the step t' → t. Randomness is three
    float64 uniforms per token, drawn from ``generator`` or passed as ``uniforms`` (3, B*N) in [0, 1).
    """
    b, n, k = z.shape
    rows_total = b * n
    r = check_truncation_r(truncation_r)
    z2, xt = z.detach().reshape(rows_total, k), x_t.reshape(-1)
    if uniforms is None:
        uniforms = torch.rand((3, rows_total), dtype=torch.float64, generator=generator, device=z.device)
    u_part, u_draw, u_code = uniforms[0], uniforms[1], uniforms[2]
    c = per_row(coef, n)
    masked = xt == k
    j = torch.where(masked, 0, xt)

    stats = torch.empty(4, rows_total, dtype=torch.float64, device=z.device)  # lse, p_j, p_notj, p_max
    j_is_max = torch.empty(rows_total, dtype=torch.bool, device=z.device)
    flat = torch.empty(rows_total, dtype=torch.bool, device=z.device)  # all logits equal
    for rows in row_chunks(rows_total, k):
        zc = z2[rows]
        st = row_stats(zc, j[rows], masked[rows])
        z_j = zc.gather(1, j[rows].unsqueeze(1)).squeeze(1).float()
        stats[0, rows], stats[1, rows] = st.lse, (z_j - st.lse).exp()
        stats[2, rows], stats[3, rows] = st.s_notj / st.s, 1.0 / st.s
        j_is_max[rows] = z_j >= st.zmax
        flat[rows] = zc.amin(1) == st.zmax
        del st
    lse, p_j, p_notj, p_max = stats
    lk = likelihoods(masked, c)

    # masked rows: MASK | p̃ | uniform, independent of the truncation
    w_mask, w_pred, w_unif = c.prev_mask, c.mask * c.prev_keep, c.mask * k * c.prev_replace
    tot = w_mask + w_pred + w_unif
    part_masked = torch.where(u_part < w_mask / tot, _MASK, torch.where(u_part < (w_mask + w_pred) / tot, _PRED, _UNIF))
    # unmasked rows: stay | p̃ without j | uniform ≠ j, bracketed over the unknown kept set
    c1_lo, c1_hi, c2_lo, c2_hi = _bracket(p_j, p_notj, p_max, j_is_max, flat, r, lk, c, k)
    surely_pred = (u_part >= c1_hi) & (u_part < c2_lo)
    part_unmasked = torch.where(
        u_part < c1_lo, _STAY, torch.where(u_part >= c2_hi, _UNIF, torch.where(surely_pred, _PRED, -1))
    )
    part = torch.where(masked, part_masked, part_unmasked)

    code = (u_code * torch.where(masked, k, k - 1)).long().clamp_(max=k - 1)
    code = torch.where(masked, code, code + (code >= j).long())
    pred = torch.zeros_like(j)
    lse_c = lse.to(torch.float64 if z.dtype == torch.float64 else torch.float32)
    # rows whose part depends on the exact kept set: sort them, decide, and keep their draw
    ambiguous = torch.nonzero(part == -1).squeeze(1)
    for sel in row_chunks(ambiguous.numel(), k):
        idx = ambiguous[sel]
        sample, sx, kept_j = _exact_kept_set(z2[idx], lse_c[idx], j[idx], masked[idx], u_draw[idx], r)
        cs = rows_of(c, idx)
        c1, c2 = _unmasked_thresholds(
            sx, torch.where(kept_j, p_j[idx], 0.0), {key: v[idx] for key, v in lk.items()}, cs, k
        )
        uu = u_part[idx]
        part[idx] = torch.where(uu < c1, _STAY, torch.where(uu < c2, _PRED, _UNIF))
        pred[idx] = sample
    # rows drawing from the truncated prediction: rejection sampling
    was_ambiguous = ~masked & (part_unmasked == -1)
    draw = torch.nonzero((part == _PRED) & ~was_ambiguous).squeeze(1)
    for sel in row_chunks(draw.numel(), k):
        idx = draw[sel]
        pred[idx] = _draw_truncated(z2[idx], lse_c[idx], j[idx], masked[idx], u_draw[idx], r, generator)
    out = torch.where(part == _MASK, k, torch.where(part == _STAY, j, torch.where(part == _UNIF, code, pred)))
    return out.reshape(b, n)
