"""``fast`` (vpdd_kernels' PyTorch references, what the scheduler runs on a CPU) against ``reference``: loss
terms, loss, gradients and posterior on every edge case.

Tolerances (documented in docs/diffusion.md):
  per-token kl / dec_nll / aux   |fast - ref| <= 1e-5 + 2e-6·|ref|   (ref = the float32 oracle; the oracle
                                 itself is ~2e-5 from a float64 run at |value| ~ 40, fast is ~10x closer)
  loss (scalar)                  relative 1e-5 (1e-6 against a float64 run of the oracle)
  gradients w.r.t. the logits    |Δ| <= 1e-5·max|g| + 1e-4·|g|, against the oracle and a float64 run
  posterior log-probs            |Δ| <= 2e-5 (one float32 ulp at -70 is 7.6e-6)
"""

from __future__ import annotations

import pytest
import torch
from vpdd_kernels import loss, posterior

from vpdd.diffusion import MaskReplaceScheduler, TokenLayout
from vpdd.diffusion.reference import ReferenceDiffusion
from vpdd.diffusion.schedule import combine_loss

# a schedule with a real replace mass (5 % at t = 0); the paper's has 1e-6
WIDE_REPLACE = {"att_1": 0.9, "att_T": 0.05, "ctt_1": 0.05, "ctt_T": 0.9}
LAYOUT = TokenLayout(n_video_codes=64, n_action_bins=7, n_video_tokens=12, n_action_tokens=4)


def _batch(layout: TokenLayout, sched: MaskReplaceScheduler, scale: float, batch: int = 16):
    """x0, x_t, t and logits covering t = 0, 1, T-2, T-1, all-MASK rows, x_t = x0, x_t ≠ x0, both
    modalities."""
    kv, ka, nv = layout.n_video_codes, layout.n_action_bins, layout.n_video_tokens
    x0 = torch.cat([torch.randint(0, kv, (batch, nv)), torch.randint(kv, kv + ka, (batch, layout.n_action_tokens))], 1)
    t = torch.randint(0, sched.num_timesteps, (batch,))
    t[:4] = torch.tensor([0, 1, sched.num_timesteps - 2, sched.num_timesteps - 1])
    x_t = sched.reference.q_sample(x0, t)
    x_t[:, 0], x_t[:, nv] = layout.mask_id, layout.mask_id  # masked
    x_t[:, 1], x_t[:, nv + 1] = x0[:, 1], x0[:, nv + 1]  # unchanged
    x_t[:, 2] = (x0[:, 2] + 1) % kv  # replaced, video
    x_t[:, nv + 2] = kv + (x0[:, nv + 2] - kv + 1) % ka  # replaced, action
    x_t[4] = layout.mask_id  # an all-[MASK] row
    x_t[5] = x0[5]  # a row with x_t = x0 everywhere
    video = scale * torch.randn(batch, nv, kv)
    video[::3].scatter_add_(2, x0[::3, :nv, None], torch.full((len(range(0, batch, 3)), nv, 1), 12.0))
    action = scale * torch.randn(batch, layout.n_action_tokens, ka)
    return x0, x_t, t, video.requires_grad_(), action.requires_grad_()


@pytest.mark.parametrize("schedule", [{}, WIDE_REPLACE], ids=["paper", "wide-replace"])
@pytest.mark.parametrize("scale", [1.0, 6.0])
def test_loss_terms_match_the_reference(make_schedulers, schedule, scale):
    fast_s, ref_s = make_schedulers(LAYOUT, **schedule)
    x0, x_t, t, video, action = _batch(LAYOUT, ref_s, scale)
    got = fast_s.loss_terms(video, action, x0, x_t, t)
    want = ref_s.loss_terms(video, action, x0, x_t, t)
    exact = ReferenceDiffusion(fast_s.tables, LAYOUT, dtype=torch.float64).loss_terms(
        video.double(), action.double(), x0, x_t, t
    )
    for name in ("kl", "nll", "aux"):
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=2e-6, msg=name)
        torch.testing.assert_close(got[name].double(), exact[name], atol=1e-5, rtol=1e-6, msg=name)
    if not schedule:  # with the paper's schedule both posteriors are (nearly) normalised: a true KL
        assert (got["kl"] > -1e-6).all()
    # t = 0 rows are where the decoder NLL is used; there it is the prediction's cross-entropy
    torch.testing.assert_close(got["nll"][0], got["aux"][0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("schedule", [{}, WIDE_REPLACE], ids=["paper", "wide-replace"])
def test_loss_and_gradients_match_the_reference(make_schedulers, schedule):
    fast_s, ref_s = make_schedulers(LAYOUT, **schedule)
    x0, x_t, t, video, action = _batch(LAYOUT, ref_s, 3.0)
    pt = torch.rand(t.shape[0]) * 0.02 + 0.001
    losses, grads = [], []
    for sched in (fast_s, ref_s):
        loss, info = sched.loss(video, action, x0, x_t, t, pt, update_history=False)
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, [video, action]))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=0)
    exact = ReferenceDiffusion(fast_s.tables, LAYOUT, dtype=torch.float64)
    v64, a64 = video.detach().double().requires_grad_(), action.detach().double().requires_grad_()
    terms = exact.loss_terms(v64, a64, x0, x_t, t)
    loss64, _ = combine_loss(
        *(terms[k].sum(1) for k in ("kl", "nll", "aux")),
        t,
        pt.double(),
        fast_s.num_timesteps,
        fast_s.aux_loss_weight,
        True,
        LAYOUT.seq_len,
    )
    torch.testing.assert_close(losses[0].double(), loss64, rtol=1e-6, atol=0)
    for got, want, best in zip(grads[0], grads[1], torch.autograd.grad(loss64, [v64, a64]), strict=True):
        scale = float(want.abs().max())
        assert scale > 0
        torch.testing.assert_close(got, want, atol=1e-5 * scale, rtol=1e-4)
        torch.testing.assert_close(got.double(), best, atol=1e-5 * scale, rtol=1e-4)


def test_pretraining_action_logits_none_means_zeros(make_schedulers):
    fast_s, ref_s = make_schedulers(LAYOUT)
    x0, x_t, t, video, action = _batch(LAYOUT, ref_s, 2.0)
    pt = torch.full((t.shape[0],), 0.01)
    zeros = torch.zeros_like(action)
    for sched in (fast_s, ref_s):
        a, _ = sched.loss(video, None, x0, x_t, t, pt, update_history=False)
        b, _ = sched.loss(video, zeros, x0, x_t, t, pt, update_history=False)
        torch.testing.assert_close(a, b)
    got = torch.autograd.grad(fast_s.loss(video, None, x0, x_t, t, pt, update_history=False)[0], video)[0]
    want = torch.autograd.grad(ref_s.loss(video, None, x0, x_t, t, pt, update_history=False)[0], video)[0]
    torch.testing.assert_close(got, want, atol=1e-5 * float(want.abs().max()), rtol=1e-4)


@pytest.mark.parametrize("schedule", [{}, WIDE_REPLACE], ids=["paper", "wide-replace"])
def test_custom_backward_passes_gradcheck(schedule):
    """The streaming backward against finite differences, independent of the reference (float64)."""
    sched = MaskReplaceScheduler(TokenLayout(7, 3, 5, 2), **schedule)
    x0 = torch.randint(0, 7, (4, 5))
    t = torch.tensor([0, 3, 50, 99])
    x_t = x0.clone()
    x_t[:, 0], x_t[:, 1] = 7, (x0[:, 1] + 1) % 7
    x_t[1] = 7
    coef = sched.tables.coefficients(t, t - 1, 0)
    z = torch.randn(4, 5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: loss.loss_terms(z, x0, x_t, coef), (z,), eps=1e-6, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("stride, truncation_r", [(1, None), (1, 0.88), (4, None), (9, 0.5)])
def test_posterior_matches_the_reference(make_schedulers, stride, truncation_r):
    fast_s, ref_s = make_schedulers(LAYOUT)
    x0, x_t, t, video, action = _batch(LAYOUT, ref_s, 3.0)
    t_prev = (t - stride).clamp(min=-1)
    got = fast_s.posterior_log_probs(video.detach(), action.detach(), x_t, t, t_prev, truncation_r)
    want = ref_s.posterior_log_probs(video.detach(), action.detach(), x_t, t, t_prev, truncation_r)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, atol=2e-5, rtol=0)


def test_posterior_at_t0_is_the_prediction():
    sched = MaskReplaceScheduler(LAYOUT)
    x0, x_t, _, video, action = _batch(LAYOUT, sched, 2.0)
    t = torch.zeros(x0.shape[0], dtype=torch.long)
    post_v, post_a = sched.posterior_log_probs(video.detach(), action.detach(), x_t, t)
    for post, logits in ((post_v, video), (post_a, action)):
        want = torch.log_softmax(logits.detach(), -1).clamp(min=-70)
        torch.testing.assert_close(post[..., :-1], want, atol=2e-5, rtol=0)
        assert (post[..., -1] <= -69).all()  # MASK is never re-entered at the last step


def test_low_precision_logits_are_computed_in_float32():
    sched = MaskReplaceScheduler(LAYOUT)
    x0, x_t, t, video, action = _batch(LAYOUT, sched, 3.0)
    pt = torch.full((t.shape[0],), 0.01)
    v16 = video.detach().bfloat16().requires_grad_()
    loss16, _ = sched.loss(v16, action, x0, x_t, t, pt, update_history=False)
    v32 = v16.detach().float().requires_grad_()
    loss32, _ = sched.loss(v32, action, x0, x_t, t, pt, update_history=False)
    assert loss16.dtype == torch.float32
    torch.testing.assert_close(loss16, loss32, rtol=1e-6, atol=0)
    (g16,), (g32,) = torch.autograd.grad(loss16, [v16]), torch.autograd.grad(loss32, [v32])
    assert g16.dtype == torch.bfloat16
    torch.testing.assert_close(g16.float(), g32, rtol=1e-2, atol=1e-2 * float(g32.abs().max()))


# ----------------------------------------------------------------- defects fixed when the row maths became one copy
def _t0_clamp_case():
    """t = 0, every video token with log p(x0) = -100 < -70: kept, masked and replaced x_t."""
    layout = TokenLayout(7, 3, 4, 2)
    sched = MaskReplaceScheduler(layout)
    x0 = torch.tensor([[1, 2, 3, 4, 8, 9]])
    x_t = torch.tensor([[1, 2, layout.mask_id, 5, 8, 9]])
    video = torch.zeros(1, 4, 7)
    video[0, torch.arange(4), x0[0, :4]] = -100.0
    return layout, sched, x0, x_t, video, torch.zeros(1, 2, 3), torch.tensor([0])


def test_t0_clamped_nll_has_zero_gradient():
    """The decoder NLL is clamped at 70 when log p(x0) < -70 (the prediction's clamp): its gradient is 0, as
    autograd through the reference gives."""
    layout, sched, x0, x_t, video, action, t = _t0_clamp_case()
    ref = ReferenceDiffusion(sched.tables, layout)
    v = video.clone().requires_grad_()
    nll_ref = ref.loss_terms(v, action, x0, x_t, t)["nll"][:, :4]
    (g_ref,) = torch.autograd.grad(nll_ref.sum(), v)
    z = video.clone().requires_grad_()
    coef = sched.tables.coefficients(t, t - 1, 0)
    _, nll, _ = loss.loss_terms(z, layout.to_local(x0[:, :4], 0), layout.to_local(x_t[:, :4], 0), coef, 3)
    (g,) = torch.autograd.grad(nll.sum(), z)
    torch.testing.assert_close(nll, torch.full_like(nll, 70.0))
    torch.testing.assert_close(nll_ref, torch.full_like(nll, 70.0))
    assert g_ref.abs().max() == 0
    assert g.abs().max() < 1e-12, g


def test_truncation_keeps_tied_classes_whatever_their_order():
    """Tie-inclusive top-r: a class is kept iff the mass strictly above it is < r, so exactly tied logits
    (all-zero action logits in pre-training) are all kept or all dropped, in every path."""
    layout = TokenLayout(12, 48, 2, 3)
    sched = MaskReplaceScheduler(layout)
    t = torch.tensor([40])
    coef = sched.tables.coefficients(t, t - 1, 1)
    z = torch.zeros(1, 3, 48)
    x_t = torch.tensor([[48, 5, 48]])
    torch.testing.assert_close(
        posterior.posterior_log_probs(z, x_t, coef, 0.88), posterior.posterior_log_probs(z, x_t, coef)
    )
    ref = ReferenceDiffusion(sched.tables, layout)
    lp = torch.log(torch.full((1, 4, 2), 0.25))
    assert torch.equal(ref.truncate(lp, 0.5), lp)
    keep = posterior.truncation_keep(torch.full((2, 4), 0.25), 0.5)
    assert keep.all()


def test_reverse_step_with_tied_logits_matches_the_tie_inclusive_posterior(pvalue):
    """Unmasked tokens with constant logits: the kept set is every class, so the draws follow the
    untruncated posterior."""
    layout = TokenLayout(6, 8, 1, 2)
    sched = MaskReplaceScheduler(layout, **WIDE_REPLACE)
    draws = 20_000
    x_t = torch.tensor([[2, 6 + 3, 6 + 5]]).expand(draws, -1)
    video = torch.randn(1, 1, 6).expand(draws, -1, -1)
    action = torch.zeros(draws, 2, 8)
    t = torch.full((draws,), 60)
    probs = sched.reference.sampling_probs(video[:1], action[:1], x_t[:1], t[:1], t[:1] - 1, None)[0]
    xs = sched.step(video, action, x_t, t, generator=torch.Generator().manual_seed(0), truncation_r=0.88)
    for n in (1, 2):
        counts = torch.bincount(xs[:, n], minlength=layout.num_classes).numpy()
        assert pvalue(counts, probs[:, n].numpy()) > 1e-4, n


def test_large_logits_give_the_gradients_of_shifted_logits():
    """Softmax is shift-invariant: logits + 65536 (exactly representable here) give the same loss terms and
    gradients, to float32 rounding of the shifted values' maths."""
    sched = MaskReplaceScheduler(LAYOUT, **WIDE_REPLACE)
    x0, x_t, t, video, _ = _batch(LAYOUT, sched, 3.0)
    z = (video.detach() * 64).round() / 64
    coef = sched.tables.coefficients(t, t - 1, 0)
    args = (LAYOUT.to_local(x0[:, :12], 0), LAYOUT.to_local(x_t[:, :12], 0), coef, 7)
    out = []
    for shift in (0.0, 65536.0):
        zz = (z + shift).requires_grad_()
        terms = loss.loss_terms(zz, *args)
        (g,) = torch.autograd.grad(sum(term.sum() for term in terms), zz)
        out.append((terms, g))
    for a, b in zip(out[0][0], out[1][0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[0][1], out[1][1], rtol=1e-4, atol=1e-6 * float(out[0][1].abs().max()))
