"""``@triton.jit`` helpers and constants shared by the kernels (must live in a .py file)."""

from __future__ import annotations

import triton
import triton.language as tl

from vpdd_kernels import _common as cm

# the constants of _common as compile-time constants (kernels may only read constexpr globals)
EPS = tl.constexpr(cm.EPS)
LOG_FLOOR = tl.constexpr(cm.LOG_FLOOR)
FLOOR = tl.constexpr(cm.FLOOR)
N_COEF = tl.constexpr(len(cm.StepCoefficients._fields))


@triton.jit
def _coefs(coef_ptr, b):
    """The 12 float64 :class:`StepCoefficients` fields of sample ``b``, in field order (unused loads compile away)."""
    c = coef_ptr + b * N_COEF
    return (
        tl.load(c + 0), tl.load(c + 1), tl.load(c + 2), tl.load(c + 3), tl.load(c + 4), tl.load(c + 5),
        tl.load(c + 6), tl.load(c + 7), tl.load(c + 8), tl.load(c + 9), tl.load(c + 10), tl.load(c + 11),
    )  # fmt: skip


@triton.jit
def _block(zrow, stride_k, k0, K, other: tl.constexpr, BLOCK_K: tl.constexpr):
    """Classes k0 .. k0 + BLOCK_K of a row: (offsets, in range, float32 logits with ``other`` outside)."""
    offs = k0 + tl.arange(0, BLOCK_K)
    valid = offs < K
    return offs, valid, tl.load(zrow + offs.to(tl.int64) * stride_k, mask=valid, other=other).to(tl.float32)


@triton.jit
def _row_softmax_stats(zrow, stride_k, K, j, masked, BLOCK_K: tl.constexpr):
    """One pass over a row: (max, Σ e, Σ_{k≠j} e) with e = exp(z - max), e_j kept on masked rows."""
    m = tl.full((), float("-inf"), tl.float32)
    s = tl.zeros((), tl.float32)
    s_notj = tl.zeros((), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs, valid, x = _block(zrow, stride_k, k0, K, float("-inf"), BLOCK_K)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        scale = tl.exp(m - m_new)
        e = tl.where(valid, tl.exp(x - m_new), 0.0)
        s = s * scale + tl.sum(e, axis=0)
        s_notj = s_notj * scale + tl.sum(tl.where((offs != j) | masked, e, 0.0), axis=0)
        m = m_new
    return m, s, s_notj


@triton.jit
def _token_row(z_ptr, xt_ptr, N, K, stride_zb, stride_zn, stride_zk, stride_xb, stride_xn, BLOCK_K: tl.constexpr):
    """This program's token row: (row, b, n, its logits, masked, j = x_t or 0 when masked, max, Σe, Σ_{k≠j} e)."""
    row = tl.program_id(0).to(tl.int64)
    b = row // N
    n = row % N
    zrow = z_ptr + b * stride_zb + n * stride_zn
    xt = tl.load(xt_ptr + b * stride_xb + n * stride_xn).to(tl.int64)
    masked = xt == K
    j = tl.where(masked, 0, xt)
    m, s, s_notj = _row_softmax_stats(zrow, stride_zk, K, j, masked, BLOCK_K)
    return row, b, n, zrow, masked, j, m, s, s_notj


@triton.jit
def _posterior_row(coef_ptr, b, masked, p_notj, p_j):
    """Per-row scalars of the closed-form posterior (``vpdd_kernels.posterior``) from the float64 kept mass
    Σ_{k≠j} p and p_j: out_k = log(base + slope·p_k) + log_u0 in the bulk, and the clamped values at j and
    at MASK."""
    ck, cr, cmk, kp, rp, mk, pk, pr, pm, _, _, _ = _coefs(coef_ptr, b)
    q_j = tl.where(masked, cmk, ck + cr)
    q_0 = tl.where(masked, cmk, cr + EPS * ck)
    u_j = tl.where(masked, mk, kp + rp)
    u_0 = tl.where(masked, mk, rp + EPS * kp)
    u_m = tl.where(masked, 1.0, EPS)
    y = tl.where(masked, p_notj / q_0, p_notj / q_0 + p_j / q_j) + EPS
    at_j = tl.log(u_j * (pk * p_j / q_j + pr * y)).to(tl.float32)
    at_m = tl.log(u_m * (pm * y + (1.0 - pm) * EPS)).to(tl.float32)
    return (
        (pr * y).to(tl.float32),
        (pk / q_0).to(tl.float32),
        tl.log(u_0).to(tl.float32),
        tl.minimum(tl.maximum(at_j, LOG_FLOOR), 0.0),
        tl.minimum(tl.maximum(at_m, LOG_FLOOR), 0.0),
    )


@triton.jit
def _log1p(x):
    """log(1 + x) accurate for small x without libdevice (Goldberg's trick; runs in the interpreter)."""
    w = 1.0 + x
    return tl.where(w == 1.0, x, tl.log(w) * (x / tl.where(w == 1.0, 1.0, w - 1.0)))


@triton.jit
def _philox_uniform(seed, offs):
    """A uniform in [0, 1) with 48 random bits near 0 (the Gumbel tail), from two Philox words."""
    w0, w1, _, _ = tl.randint4x(seed, offs)
    hi = (w0 >> 8).to(tl.float32) * 5.9604644775390625e-08  # 2^-24
    lo = (w1 >> 8).to(tl.float32) * 3.552713678800501e-15  # 2^-48
    return tl.minimum(hi + lo, 0.99999994)


@triton.jit
def _gumbel(u, REF: tl.constexpr):
    """Gumbel noise from uniforms. REF: the reference's -log(-log(u + 1e-30) + 1e-30) (bit-compatible with
    an injected uniform); otherwise -log(E), E = -log1p(-u) computed accurately, so the winning tail is at
    u -> 0 where the uniform has 48 bits (kernels.md §2.b)."""
    if REF:
        g = -tl.log(-tl.log(u + EPS) + EPS)
    else:
        w = 1.0 - u
        e = tl.where(w == 1.0, u, tl.log(w) * (u / tl.where(w == 1.0, 1.0, w - 1.0)))
        g = -tl.log(e)
    return g
