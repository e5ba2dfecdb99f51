"""Fused sampling: forward noising (``q_sample``) and one reverse step (``reverse_step``); the PyTorch
reference and fallback is :mod:`vpdd_kernels.sampling` (exact in distribution, different draws).

``q_sample`` is the closed form of kernels.md §1.6, O(1) per token: one Philox call per token gives two
float64 uniforms with 53 random bits each (the paper's replace mass, 1e-6, is below float32 resolution
near 1), compared against per-sample float64 thresholds. Indices in, indices out.

``reverse_step`` is the literal Gumbel-max of the released code, fused: logits in, one index per token
out, never a (B, N, K+1) tensor. One program per token row:

1. online (max, Σe, Σ_{k≠j} e) and z_j;
2. with top-r truncation, the kept set {k : mass ranked strictly above p_k < r} is found without a sort
   by bisection on a probability threshold τ (each step one pass computing Σ_{p>τ} p; it stops as soon as
   no class lies strictly between the bracket ends, usually after ~20 passes that hit L2);
3. the posterior value of every class (the closed form of ``posterior`` on the truncated prediction)
   plus Gumbel noise, reduced by an online argmax; MASK is class K.

Modality masking is structural: the kernel works in one modality's local vocabulary (its K codes and
MASK), which is exactly the set the reference's -1e4 masking leaves reachable.

Randomness: Philox, ``tl.randint4x(seed, row·(K+1) + k)`` with the seed a device tensor drawn from the
caller's generator. Two words give a uniform with 48 bits near 0 and the Gumbel transform puts the
winning tail there (E = -log1p(-u) computed accurately, g = -log E; kernels.md §2.b). For tests,
``uniforms`` (B·N, K+1) float32 can be injected; the kernel then applies the reference's transform
-log(-log(u + 1e-30) + 1e-30), so its draws equal the reference's Gumbel-argmax fed the same uniforms.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vpdd_kernels import _common as cm
from vpdd_kernels._jit_common import (
    FLOOR,
    LOG_FLOOR,
    N_COEF,
    _block,
    _gumbel,
    _philox_uniform,
    _posterior_row,
    _token_row,
)
from vpdd_kernels.sampling import check_truncation_r


# --------------------------------------------------------------------------------------------- q_sample
@triton.jit
def _u53(w_hi, w_lo):
    """float64 uniform in [0, 1) from two uint32 words (53 bits)."""
    hi = (w_hi >> 5).to(tl.float64)  # 27 bits
    lo = (w_lo >> 6).to(tl.float64)  # 26 bits
    return (hi * 67108864.0 + lo) * 1.1102230246251565e-16  # (hi·2^26 + lo)·2^-53


@triton.jit
def _q_sample_kernel(
    x0_ptr, coef_ptr, u_ptr, seed_ptr, out_ptr,
    R, N, K,
    USE_UNIFORMS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    valid = offs < R
    b = offs // N
    x0 = tl.load(x0_ptr + offs, mask=valid, other=0)
    ck = tl.load(coef_ptr + b * N_COEF + 0, mask=valid, other=0.0)
    cr = tl.load(coef_ptr + b * N_COEF + 1, mask=valid, other=0.0)
    cmk = tl.load(coef_ptr + b * N_COEF + 2, mask=valid, other=0.0)
    if USE_UNIFORMS:
        u0 = tl.load(u_ptr + offs, mask=valid, other=0.0)
        u1 = tl.load(u_ptr + R + offs, mask=valid, other=0.0)
    else:
        seed = tl.load(seed_ptr)
        w0, w1, w2, w3 = tl.randint4x(seed, offs)
        u0 = _u53(w0, w1)
        u1 = _u53(w2, w3)
    code = tl.minimum((u1 * K).to(tl.int64), K - 1)
    to_mask = u0 < cmk
    kept = (u0 >= cmk) & (u0 < cmk + ck)
    out = tl.where(to_mask, K, tl.where(kept, x0, code))
    stay_mask = u0 < 1.0 / (1.0 + K * cr)
    out = tl.where(x0 == K, tl.where(stay_mask, K, code), out)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=valid)


def _noise_args(uniforms, shape: tuple[int, ...], dtype, generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernels' (uniforms, seed): injected uniforms and a dummy seed, or a dummy and a seed from ``generator``."""
    if uniforms is None:
        return torch.zeros(1, dtype=dtype, device=device), cm.draw_seed(generator, device)
    if uniforms.shape != shape:
        raise ValueError(f"uniforms: shape {tuple(uniforms.shape)}, expected {shape}")
    return uniforms.to(device=device, dtype=dtype).contiguous(), torch.zeros(1, dtype=torch.int64, device=device)


def q_sample(
    x0: torch.Tensor,
    coef: cm.StepCoefficients,
    n_codes: int,
    generator: torch.Generator | None = None,
    *,
    uniforms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Forward noising of local indices x0 (B, N) (codes [0, K), MASK = K); same contract and the same
    decision rule as :func:`vpdd_kernels.sampling.q_sample`. ``uniforms`` (2, B, N) float64 replaces the
    Philox draws (tests: with the PyTorch path's own uniforms the result is identical)."""
    b, n = x0.shape
    x0c = x0.contiguous()
    out = torch.empty_like(x0c)
    coefs = cm.pack_coefficients(coef, b, x0.device)
    u, seed = _noise_args(uniforms, (2, b, n), torch.float64, generator, x0.device)
    rows = b * n
    block = 1024
    _q_sample_kernel[(triton.cdiv(rows, block),)](
        x0c, coefs, u, seed, out, rows, n, int(n_codes), USE_UNIFORMS=uniforms is not None, BLOCK=block
    )
    return out


# ------------------------------------------------------------------------------------------ reverse step
@triton.jit
def _reverse_step_kernel(
    z_ptr, xt_ptr, coef_ptr, u_ptr, seed_ptr, out_ptr,
    N, K, r,
    stride_zb, stride_zn, stride_zk,
    stride_xb, stride_xn,
    TRUNCATE: tl.constexpr, USE_UNIFORMS: tl.constexpr, MAX_ITERS: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    row, b, _, zrow, masked, j, m, s, s_notj = _token_row(
        z_ptr, xt_ptr, N, K, stride_zb, stride_zn, stride_zk, stride_xb, stride_xn, BLOCK_K
    )
    lse = m + tl.log(s)
    z_j = tl.load(zrow + j * stride_zk).to(tl.float32)
    p_j = tl.maximum(tl.exp(z_j - lse), FLOOR)

    # top-r: kept = {k : p_k > lo}, found by bisection on a threshold with f(lo) >= r > f(hi)
    lo = tl.zeros((), tl.float32)
    if TRUNCATE:
        hi = tl.exp(m - lse)  # p_max: nothing is ranked above it
        it = tl.zeros((), tl.int32)
        go = lo == lo
        while go:
            mid = lo * 0.5 + hi * 0.5
            f = tl.zeros((), tl.float32)
            between = tl.zeros((), tl.int32)
            for k0 in range(0, K, BLOCK_K):
                offs, valid, x = _block(zrow, stride_zk, k0, K, float("-inf"), BLOCK_K)
                p = tl.exp(x - lse)
                f += tl.sum(tl.where(p > mid, p, 0.0), axis=0)
                between += tl.sum(((p > lo) & (p < hi)).to(tl.int32), axis=0)
            done = (between == 0) | (mid <= lo) | (mid >= hi) | (it >= MAX_ITERS)
            below = f < r
            new_lo = tl.where(below, lo, mid)
            new_hi = tl.where(below, mid, hi)
            lo = tl.where(done, lo, new_lo)
            hi = tl.where(done, hi, new_hi)
            it += 1
            go = ~done
        # kept mass without j (dropped classes keep the e^-70 floor, as the reference's -70)
        sx = tl.zeros((), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs, valid, x = _block(zrow, stride_zk, k0, K, float("-inf"), BLOCK_K)
            p = tl.exp(x - lse)
            pt = tl.where(p > lo, tl.maximum(p, FLOOR), FLOOR)
            sx += tl.sum(tl.where(valid & ((offs != j) | masked), pt, 0.0), axis=0)
        p_j = tl.where(tl.exp(z_j - lse) > lo, p_j, FLOOR)
        p_notj = sx.to(tl.float64)
    else:
        p_notj = (s_notj / s).to(tl.float64)

    base, slope, log_u0, at_j, at_m = _posterior_row(coef_ptr, b, masked, p_notj, p_j.to(tl.float64))

    # Gumbel-argmax over the K codes, then MASK (class K); ties go to the lowest index like torch.argmax
    ubase = row * (K + 1)
    if not USE_UNIFORMS:
        seed = tl.load(seed_ptr)
    best = tl.full((), float("-inf"), tl.float32)
    best_idx = tl.zeros((), tl.int64)
    for k0 in range(0, K, BLOCK_K):
        offs, valid, x = _block(zrow, stride_zk, k0, K, float("-inf"), BLOCK_K)
        p = tl.exp(x - lse)
        if TRUNCATE:  # noqa: SIM108 (a constexpr branch inside a Triton kernel)
            p = tl.where(p > lo, tl.maximum(p, FLOOR), FLOOR)
        else:
            p = tl.maximum(p, FLOOR)
        val = tl.log(base + slope * p) + log_u0
        val = tl.minimum(tl.maximum(val, LOG_FLOOR), 0.0)
        val = tl.where((offs == j) & (~masked), at_j, val)
        uoffs = ubase + offs.to(tl.int64)
        if USE_UNIFORMS:
            u = tl.load(u_ptr + uoffs, mask=valid, other=0.5)
            g = _gumbel(u, True)
        else:
            g = _gumbel(_philox_uniform(seed, uoffs), False)
        score = tl.where(valid, val + g, float("-inf"))
        blk_best, blk_idx = tl.max(score, axis=0, return_indices=True, return_indices_tie_break_left=True)
        better = blk_best > best
        best = tl.where(better, blk_best, best)
        best_idx = tl.where(better, k0 + blk_idx.to(tl.int64), best_idx)
    if USE_UNIFORMS:
        g_m = _gumbel(tl.load(u_ptr + ubase + K), True)
    else:
        g_m = _gumbel(_philox_uniform(seed, ubase + K), False)
    best_idx = tl.where(at_m + g_m > best, K, best_idx)
    tl.store(out_ptr + row, best_idx)


def reverse_step(
    z: torch.Tensor,
    x_t: torch.Tensor,
    coef: cm.StepCoefficients,
    truncation_r: float | None = None,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
    *,
    block_k: int | None = None,
    max_iters: int = 160,
) -> torch.Tensor:
    """Draw x_{t'} (B, N) local indices (MASK = K) from p_θ(x_{t'} | x_t) of one modality; the contract of
    :func:`vpdd_kernels.sampling.reverse_step` except ``uniforms``: here (B·N, K+1) float32 in
    [0, 1), one per (token, class) as the reference's Gumbel-argmax uses them (tests)."""
    cm.check_logits(z, x_t)
    b, n, k = z.shape
    r = check_truncation_r(truncation_r)
    coefs = cm.pack_coefficients(coef, b, z.device)
    u, seed = _noise_args(uniforms, (b * n, k + 1), torch.float32, generator, z.device)
    out = torch.empty(b * n, dtype=torch.int64, device=z.device)
    blk = cm.block_k(k, block_k)
    _reverse_step_kernel[(b * n,)](
        z, x_t, coefs, u, seed, out,
        n, k, 0.0 if r is None else r,
        z.stride(0), z.stride(1), z.stride(2),
        x_t.stride(0), x_t.stride(1),
        TRUNCATE=r is not None, USE_UNIFORMS=uniforms is not None, MAX_ITERS=max_iters,
        BLOCK_K=blk, num_warps=cm.num_warps(blk),
    )  # fmt: skip
    return out.reshape(b, n)
