"""Fused q_sample and reverse step: bit-exact against the reference/fast path fed the same uniforms,
statistically against the closed-form distribution with Philox, deterministic, block-size invariant."""

from __future__ import annotations

import pytest
import torch
from scipy import stats
from vpdd_kernels import posterior, sampling
from vpdd_kernels import sampling_triton as ks

from vpdd.diffusion.layout import ACTION, VIDEO
from vpdd.diffusion.schedule import ScheduleTables

from ._problems import LAYOUT, guarded, local, problem, reference, tables


def _reference_draw(ref, zv, za, xt, t, t_prev, r, u):
    """The reference's Gumbel-argmax (``sample_categorical``) with explicit uniforms u (B, C, N)."""
    logp = ref.modality_masked(ref.posterior_log_probs(zv, za, xt, t, t_prev, r))
    gumbel = -torch.log(-torch.log(u + 1e-30) + 1e-30)
    return (gumbel + logp).argmax(dim=1)


@pytest.mark.parametrize("r", [None, 0.88, 0.3])
@pytest.mark.parametrize(("t", "t_prev"), [((50, 3), (49, 2)), ((0, 99), (-1, 90))])
def test_reverse_step_bit_exact_with_reference_uniforms(device, r, t, t_prev):
    tab = tables()
    ref = reference(tab, device)
    zv, za, x0, _ = problem(5, device)
    t, t_prev = torch.tensor(t, device=device), torch.tensor(t_prev, device=device)
    g = torch.Generator(device=device).manual_seed(11)
    xt = ref.q_sample(x0, t, g)
    xt[0, 0] = LAYOUT.mask_id
    u = torch.rand(xt.shape[0], LAYOUT.num_classes, LAYOUT.seq_len, generator=g, device=device)
    want = _reference_draw(ref, zv, za, xt, t, t_prev, r, u)
    for m, z in ((VIDEO, zv), (ACTION, za)):
        pos, off, k = LAYOUT.positions(m), LAYOUT.code_offset(m), LAYOUT.n_codes(m)
        cls = list(range(off, off + k)) + [LAYOUT.mask_id]
        uu = u[:, cls, pos].permute(0, 2, 1).reshape(-1, k + 1)
        got = ks.reverse_step(z, local(xt, m), tab.coefficients(t, t_prev, m), r, uniforms=uu)
        assert torch.equal(LAYOUT.from_local(got, m), want[:, pos])


def test_reverse_step_with_tied_logits_matches_the_reference(device):
    """All-zero action logits (pre-training) tie every class. The Triton bisection and the oracle's
    tie-inclusive truncation keep the same set (all 5 classes at r = 0.5, where an order-dependent sort
    keeps 3), so draws fed the same uniforms are identical."""
    tab = tables(0.05)
    ref = reference(tab, device)
    zv, za, x0, xt = problem(16, device)
    za = torch.zeros_like(za)
    t, t_prev = torch.tensor([50, 0], device=device), torch.tensor([49, -1], device=device)
    lp = ref.predict_start(zv, za)[:, :, LAYOUT.n_video_tokens :]
    assert torch.equal(ref.truncate(lp, 0.5), lp)
    pos, off, k = LAYOUT.positions(ACTION), LAYOUT.code_offset(ACTION), LAYOUT.n_codes(ACTION)
    cls = list(range(off, off + k)) + [LAYOUT.mask_id]
    g = torch.Generator(device=device).manual_seed(4)
    for _ in range(4):
        u = torch.rand(xt.shape[0], LAYOUT.num_classes, LAYOUT.seq_len, generator=g, device=device)
        want = _reference_draw(ref, zv, za, xt, t, t_prev, 0.5, u)[:, pos]
        uu = u[:, cls, pos].permute(0, 2, 1).reshape(-1, k + 1)
        got = ks.reverse_step(za, local(xt, ACTION), tab.coefficients(t, t_prev, ACTION), 0.5, uniforms=uu)
        assert torch.equal(LAYOUT.from_local(got, ACTION), want)


def test_reverse_step_deterministic_seeded_block_invariant_guarded(device):
    tab = tables()
    zv, _, _, xt = problem(6, device)
    t = torch.tensor([0, 0], device=device)  # the last step from all-MASK: every token draws from p̃
    coef = tab.coefficients(t, t - 1, VIDEO)
    xl = torch.full_like(local(xt, VIDEO), LAYOUT.n_video_codes)

    def draw(seed, **kw):
        return ks.reverse_step(zv if "z" not in kw else kw.pop("z"), kw.pop("x", xl), coef, 0.88,
                               torch.Generator(device=device).manual_seed(seed), **kw)  # fmt: skip

    a = draw(1)
    assert torch.equal(a, draw(1))
    assert torch.equal(a, draw(1, block_k=16))  # Philox counters are (row, class): no dependence on tiling
    assert torch.equal(a, draw(1, z=guarded(zv), x=guarded(xl, fill=-7), block_k=16))
    assert not torch.equal(a, draw(2))
    assert ((a >= 0) & (a < zv.shape[2])).all()


def _chi2_pvalue(draws: torch.Tensor, probs: torch.Tensor) -> float:
    counts = torch.bincount(draws, minlength=probs.numel()).double()
    expected = probs.double() * draws.numel()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "a zero-probability class was drawn"
    return float(
        stats.chisquare(
            counts[keep].numpy(), expected[keep].numpy() * counts.sum().item() / expected[keep].sum().item()
        ).pvalue
    )


@pytest.mark.parametrize(("xt_value", "r", "n"), [(4, None, 400), (1, 0.6, 160)])
def test_reverse_step_philox_distribution(device, xt_value, r, n):
    """n Philox draws of one token (K = 4) against softmax of the posterior: chi-square p > 1e-3 (the
    interpreter costs ~25 ms per row, ~100 ms with truncation; on a GPU raise n freely)."""
    k = 4
    tab = ScheduleTables.build(100, k, 3, 0.99999 - 0.2, 0.000009, 0.000009, 0.99999 - 0.2)  # real replace mass
    z = torch.tensor([1.2, 0.3, -0.4, 0.9], device=device).expand(1, n, k)
    xt = torch.full((1, n), xt_value, device=device)
    t, t_prev = torch.tensor([60], device=device), torch.tensor([20], device=device)
    coef = tab.coefficients(t, t_prev, VIDEO)
    draws = ks.reverse_step(z, xt, coef, r, torch.Generator(device=device).manual_seed(7)).reshape(-1).cpu()
    logp = posterior.posterior_log_probs(z[:, :1], xt[:, :1], coef, r).reshape(-1).double()
    probs = torch.softmax(logp, 0).cpu()
    assert _chi2_pvalue(draws, probs) > 1e-3


def test_q_sample_bit_exact_with_fast_uniforms(device):
    tab = tables(0.05)
    _, _, x0, _ = problem(8, device)
    for m in (VIDEO, ACTION):
        x = local(x0, m)
        x[0, 0] = LAYOUT.n_codes(m)  # a MASK input
        t = torch.tensor([0, 63], device=device)
        coef = tab.coefficients(t, t - 1, m)
        g = torch.Generator(device=device).manual_seed(3)
        want = sampling.q_sample(x, coef, LAYOUT.n_codes(m), g)
        g = torch.Generator(device=device).manual_seed(3)
        u = torch.rand((2, *x.shape), dtype=torch.float64, generator=g, device=device)
        assert torch.equal(ks.q_sample(x, coef, LAYOUT.n_codes(m), uniforms=u), want)


def test_q_sample_philox_distribution(device):
    """20,000 Philox draws against q(x_t | x0): MASK γ̄, x0 ā + β̄, every other code β̄."""
    k, n = 6, 20000
    tab = ScheduleTables.build(100, k, 3, 0.99999 - 0.3, 0.000009, 0.000009, 0.99999 - 0.3)
    x0 = torch.full((1, n), 2, device=device)
    t = torch.tensor([50], device=device)
    coef = tab.coefficients(t, t - 1, VIDEO)
    a = ks.q_sample(x0, coef, k, torch.Generator(device=device).manual_seed(0))
    assert torch.equal(a, ks.q_sample(x0, coef, k, torch.Generator(device=device).manual_seed(0)))
    probs = torch.full((k + 1,), float(coef.cum_replace[0]))
    probs[2] += float(coef.cum_keep[0])
    probs[k] = float(coef.cum_mask[0])
    assert _chi2_pvalue(a.reshape(-1).cpu(), probs) > 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reverse_step_large_bit_exact_gpu(dtype):
    """(4, 1152, 2048) on the GPU, against the reference's Gumbel-argmax with the same uniforms."""
    from vpdd.diffusion.layout import TokenLayout
    from vpdd.diffusion.reference import ReferenceDiffusion

    lay = TokenLayout(2048, 48, 1152, 16)
    tab = ScheduleTables.build(100, 2048, 48)
    ref = ReferenceDiffusion(tab, lay, "cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    zv = (3 * torch.randn(4, 1152, 2048, generator=g, device="cuda")).to(dtype)
    za = torch.zeros(4, 16, 48, device="cuda")
    x0 = torch.cat([torch.randint(0, 2048, (4, 1152), generator=g, device="cuda"),
                    torch.randint(2048, 2096, (4, 16), generator=g, device="cuda")], 1)  # fmt: skip
    t, t_prev = torch.tensor([10, 40, 70, 99], device="cuda"), torch.tensor([9, 39, 69, 98], device="cuda")
    xt = ref.q_sample(x0, t, g)
    u = torch.rand(4, lay.num_classes, lay.seq_len, generator=g, device="cuda")
    want = _reference_draw(ref, zv.float(), za, xt, t, t_prev, 0.88, u)[:, :1152]
    cls = list(range(2048)) + [lay.mask_id]
    uu = u[:, cls, :1152].permute(0, 2, 1).reshape(-1, 2049)
    got = ks.reverse_step(zv, xt[:, :1152], tab.coefficients(t, t_prev, VIDEO), 0.88, uniforms=uu)
    assert (got != want).float().mean() < 1e-3  # float32 near-ties only
