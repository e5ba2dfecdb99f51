"""Fused loss (forward statistics + streaming backward) against the fast path and autograd through the
reference oracle."""

from __future__ import annotations

import pytest
import torch
from vpdd_kernels import loss
from vpdd_kernels import loss_triton as kl_

from vpdd.diffusion.layout import ACTION, VIDEO

from ._problems import LAYOUT, guarded, local, problem, reference, tables


def _run(fn, z, x0, xt, coef, n_other, weights, **kw):
    z = z.detach().clone().requires_grad_()
    terms = fn(z, x0, xt, coef, n_other, **kw)
    total = sum((w * term.float()).sum() for w, term in zip(weights, terms, strict=True))
    total.backward()
    return [term.detach() for term in terms], z.grad


@pytest.mark.parametrize(("t", "replace"), [((0, 50), 0.0), ((99, 1), 0.0), ((30, 0), 0.05)])
def test_loss_matches_fast(device, t, replace):
    tab = tables(replace)
    zv, za, x0, xt = problem(9, device)
    t = torch.tensor(t, device=device)
    w = torch.randn(3, *xt.shape, generator=torch.Generator().manual_seed(0)).to(device)
    for m, z in ((VIDEO, zv), (ACTION, za)):
        pos = LAYOUT.positions(m)
        args = (local(x0, m), local(xt, m), tab.coefficients(t, t - 1, m), LAYOUT.n_codes(1 - m), w[:, :, pos])
        got, g_got = _run(kl_.loss_terms, z, *args)
        want, g_want = _run(loss.loss_terms, z, *args)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-6 * g_want.abs().max().item() + 1e-7)


def test_loss_matches_reference_autograd(device):
    """Per-token terms and ∂/∂logits against autograd through the released code's maths (docs tolerances)."""
    tab = tables()
    ref = reference(tab, device)
    zv, za, x0, xt = problem(10, device)
    t = torch.tensor([0, 37], device=device)
    w = torch.randn(3, *xt.shape, generator=torch.Generator().manual_seed(1)).to(device)
    zr_v, zr_a = zv.clone().requires_grad_(), za.clone().requires_grad_()
    ref_terms = ref.loss_terms(zr_v, zr_a, x0, xt, t)
    sum((wq * ref_terms[k]).sum() for wq, k in zip(w, ("kl", "nll", "aux"), strict=True)).backward()
    for m, z, z_ref in ((VIDEO, zv, zr_v), (ACTION, za, zr_a)):
        pos = LAYOUT.positions(m)
        args = (local(x0, m), local(xt, m), tab.coefficients(t, t - 1, m), LAYOUT.n_codes(1 - m), w[:, :, pos])
        got, grad = _run(kl_.loss_terms, z, *args)
        for a, k in zip(got, ("kl", "nll", "aux"), strict=True):
            b = ref_terms[k][:, pos].detach()
            assert ((a - b).abs() <= 1e-5 + 2e-6 * b.abs()).all(), k
        g = z_ref.grad
        assert ((grad - g).abs() <= 1e-5 * g.abs().max() + 1e-4 * g.abs()).all()


def test_loss_bf16_block_invariance_and_guards(device):
    tab = tables()
    zv, _, x0, xt = problem(11, device)
    t = torch.tensor([12, 88], device=device)
    coef = tab.coefficients(t, t - 1, VIDEO)
    w = torch.ones(3, *zv.shape[:2], device=device)
    x0l, xtl = local(x0, VIDEO), local(xt, VIDEO)
    base, g_base = _run(kl_.loss_terms, zv, x0l, xtl, coef, 5, w)
    blk, g_blk = _run(kl_.loss_terms, zv, x0l, xtl, coef, 5, w, block_k=16)
    for a, b in zip(blk, base, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g_blk, g_base, rtol=1e-5, atol=1e-7)
    # NaN guard regions around the logits: reads stay in bounds, results unchanged
    zg = guarded(zv).detach().requires_grad_()
    terms = kl_.loss_terms(zg, guarded(x0l, fill=-7), guarded(xtl, fill=-7), coef, 5, block_k=16)
    sum(term.sum() for term in terms).backward()
    for a, b in zip(terms, blk, strict=True):
        assert torch.equal(a.detach(), b)
    assert torch.equal(zg.grad, g_blk)
    # bf16 logits: float32 maths, gradient stored in bf16
    zb = zv.to(torch.bfloat16)
    got, g_got = _run(kl_.loss_terms, zb, x0l, xtl, coef, 5, w)
    want, g_want = _run(loss.loss_terms, zb, x0l, xtl, coef, 5, w)
    assert g_got.dtype == torch.bfloat16
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        g_got.float(), g_want.float(), rtol=1.6e-2, atol=1e-2 * g_want.float().abs().max().item()
    )


def test_loss_partial_upstream_gradients(device):
    """Only kl used: the other outputs' gradients are None in backward."""
    tab = tables()
    zv, _, x0, xt = problem(12, device)
    t = torch.tensor([5, 60], device=device)
    coef = tab.coefficients(t, t - 1, VIDEO)
    za, zb = zv.clone().requires_grad_(), zv.clone().requires_grad_()
    kl_.loss_terms(za, local(x0, VIDEO), local(xt, VIDEO), coef)[0].sum().backward()
    loss.loss_terms(zb, local(x0, VIDEO), local(xt, VIDEO), coef)[0].sum().backward()
    torch.testing.assert_close(za.grad, zb.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loss_large_gpu(dtype):
    from vpdd.diffusion.schedule import ScheduleTables

    tab = ScheduleTables.build(100, 8192, 48)
    g = torch.Generator(device="cuda").manual_seed(0)
    z = (3 * torch.randn(8, 1152, 8192, generator=g, device="cuda")).to(dtype)
    x0 = torch.randint(0, 8192, (8, 1152), generator=g, device="cuda")
    t = torch.randint(0, 100, (8,), generator=g, device="cuda")
    xt = torch.where(torch.rand(8, 1152, device="cuda", generator=g) < 0.5, 8192, x0)
    coef = tab.coefficients(t, t - 1, VIDEO)
    w = torch.ones(3, 8, 1152, device="cuda")
    got, g_got = _run(kl_.loss_terms, z, x0, xt, coef, 48, w)
    want, g_want = _run(loss.loss_terms, z, x0, xt, coef, 48, w)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b.float(), rtol=1e-4, atol=1e-4)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(g_got.float(), g_want.float(), rtol=tol, atol=tol * g_want.float().abs().max().item())


def test_loss_clamp_at_t0_and_shifted_logits(device):
    """The two loss defects, in the kernel (the row algebra is shared with the PyTorch reference): at t = 0
    with log p(x0) < -70 the NLL is the clamp (70) and its gradient 0; logits + 65536 (exact here) give the
    same terms and gradients."""
    tab = tables(0.05)
    zv, _, x0, xt = problem(14, device)
    x0l, xtl = local(x0, VIDEO), local(xt, VIDEO)
    t = torch.tensor([0, 0], device=device)
    z = (zv * 64).round() / 64
    z[torch.arange(2)[:, None], torch.arange(5)[None, :], x0l] = -100.0
    zz = z.clone().requires_grad_()
    _, nll, _ = kl_.loss_terms(zz, x0l, xtl, tab.coefficients(t, t - 1, VIDEO), 5)
    (g,) = torch.autograd.grad(nll.sum(), zz)
    torch.testing.assert_close(nll, torch.full_like(nll, 70.0))
    assert g.abs().max() < 1e-12
    t = torch.tensor([0, 37], device=device)
    coef = tab.coefficients(t, t - 1, VIDEO)
    w = torch.ones(3, *zv.shape[:2], device=device)
    base, g_base = _run(kl_.loss_terms, (zv * 64).round() / 64, x0l, xtl, coef, 5, w)
    shifted, g_shifted = _run(kl_.loss_terms, (zv * 64).round() / 64 + 65536.0, x0l, xtl, coef, 5, w)
    for a, b in zip(shifted, base, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_shifted, g_base, rtol=1e-4, atol=1e-6 * g_base.abs().max().item())
