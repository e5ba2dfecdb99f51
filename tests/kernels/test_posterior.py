"""Fused posterior kernel against its PyTorch reference and the reference oracle (interpreter on CPU)."""

from __future__ import annotations

import pytest
import torch
from vpdd_kernels import posterior
from vpdd_kernels import posterior_triton as kp

from vpdd.diffusion.layout import ACTION, VIDEO

from ._problems import LAYOUT, guarded, local, problem, reference, tables

ATOL = 2e-5  # log space after the clamps; one float32 ulp at -70 is 7.6e-6 (docs/diffusion.md)


def _reference_local(ref, zv, za, xt, t, t_prev, m):
    full = ref.posterior_log_probs(zv, za, xt, t, t_prev)
    off, k = LAYOUT.code_offset(m), LAYOUT.n_codes(m)
    cls = list(range(off, off + k)) + [LAYOUT.mask_id]
    return full[:, cls, LAYOUT.positions(m)].permute(0, 2, 1)


@pytest.mark.parametrize(
    ("t", "t_prev", "replace"),
    [((0, 1), (-1, 0), 0.0), ((50, 99), (49, 98), 0.0), ((60, 9), (20, -1), 0.0), ((30, 70), (29, 69), 0.05)],
)
def test_posterior_matches_fast_and_reference(device, t, t_prev, replace):
    tab = tables(replace)
    zv, za, _, xt = problem(1, device)
    t, t_prev = torch.tensor(t, device=device), torch.tensor(t_prev, device=device)
    ref = reference(tab, device)
    for m, z in ((VIDEO, zv), (ACTION, za)):
        coef = tab.coefficients(t, t_prev, m)
        got = kp.posterior_log_probs(z, local(xt, m), coef)
        assert got.shape == (*z.shape[:2], z.shape[2] + 1) and got.dtype == torch.float32
        torch.testing.assert_close(got, posterior.posterior_log_probs(z, local(xt, m), coef), rtol=0, atol=ATOL)
        want = _reference_local(ref, zv, za, xt, t, t_prev, m)
        torch.testing.assert_close(got, want, rtol=0, atol=ATOL)


def test_posterior_block_invariance_strides_and_guards(device):
    tab = tables()
    zv, _, _, xt = problem(2, device)
    t = torch.tensor([3, 77], device=device)
    coef = tab.coefficients(t, t - 1, VIDEO)
    xl = local(xt, VIDEO)
    base = kp.posterior_log_probs(zv, xl, coef)
    # 3 blocks with a ragged tail: the same maths up to the summation order of the online log-sum-exp
    torch.testing.assert_close(kp.posterior_log_probs(zv, xl, coef, block_k=16), base, rtol=0, atol=2e-6)
    base = kp.posterior_log_probs(zv, xl, coef, block_k=16)
    # NaN-poisoned guard regions around the logits, -7 around x_t, a sentinel around the output
    z_g, x_g = guarded(zv), guarded(xl, fill=-7)
    out_buf = torch.full((zv.shape[0] + 2, zv.shape[1] + 2, zv.shape[2] + 4), 123.0, device=device)
    out = out_buf[1:-1, 1:-1, 1:-2]
    got = kp.posterior_log_probs(z_g, x_g, coef, out=out, block_k=16)
    assert torch.equal(got, base)
    assert torch.isfinite(got).all()
    untouched = out_buf.clone()
    untouched[1:-1, 1:-1, 1:-2] = 123.0
    assert (untouched == 123.0).all()
    # the class-major (B, K, N) layout, read through strides
    z_t = zv.transpose(1, 2).contiguous().transpose(1, 2)
    assert torch.equal(kp.posterior_log_probs(z_t, xl, coef, block_k=16), base)


def test_posterior_bf16_inputs(device):
    tab = tables()
    zv, _, _, xt = problem(3, device)
    zb = zv.to(torch.bfloat16)
    t = torch.tensor([40, 5], device=device)
    coef = tab.coefficients(t, t - 1, VIDEO)
    got = kp.posterior_log_probs(zb, local(xt, VIDEO), coef)
    torch.testing.assert_close(got, posterior.posterior_log_probs(zb, local(xt, VIDEO), coef), rtol=0, atol=ATOL)


def test_posterior_truncation_falls_back(device):
    tab = tables()
    zv, _, _, xt = problem(4, device)
    t = torch.tensor([40, 5], device=device)
    coef = tab.coefficients(t, t - 1, VIDEO)
    got = kp.posterior_log_probs(zv, local(xt, VIDEO), coef, 0.5)
    assert torch.equal(got, posterior.posterior_log_probs(zv, local(xt, VIDEO), coef, 0.5))
