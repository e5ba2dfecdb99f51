"""Sampling: frequencies against closed-form probabilities, determinism, the strided chain."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from vpdd.diffusion import MaskReplaceScheduler, TokenLayout
from vpdd.diffusion.reference import ReferenceDiffusion, index_to_log_onehot

WIDE_REPLACE = {"att_1": 0.9, "att_T": 0.05, "ctt_1": 0.05, "ctt_T": 0.9}
DRAWS = 20_000
P_MIN = 1e-4  # fixed seeds make these deterministic; a correct sampler fails one in 10^4 cells


def _q_sample_probs(sched: MaskReplaceScheduler, x0: torch.Tensor, t: int) -> np.ndarray:
    """(C, N) closed form: γ̄ on MASK, ā + β̄ on x0, β̄ on every other class of the token's modality."""
    ref = ReferenceDiffusion(sched.tables, sched.layout, dtype=torch.float64)
    logp = ref.q_pred(index_to_log_onehot(x0, sched.layout.num_classes, torch.float64), torch.tensor([t]))
    return torch.softmax(ref.modality_masked(logp), dim=1)[0].numpy()


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("t", [0, 30, 99])
def test_q_sample_frequencies_match_the_closed_form(small_layout, pvalue, impl, t):
    sched = MaskReplaceScheduler(small_layout, impl=impl, **WIDE_REPLACE)
    x0 = torch.tensor([[0, 5, 11, 3, 3, 7, 12, 16, 14]])
    probs = _q_sample_probs(sched, x0, t)
    g = torch.Generator().manual_seed(t)
    xs = sched.add_noise(x0.expand(DRAWS, -1), torch.full((DRAWS,), t), g)
    assert small_layout.is_valid(xs)
    for n in range(x0.shape[1]):
        counts = np.bincount(xs[:, n].numpy(), minlength=small_layout.num_classes)
        assert pvalue(counts, probs[:, n]) > P_MIN, (impl, t, n)


def test_fast_q_sample_at_the_paper_schedule_rates(small_layout):
    """Rare events at t = 0 of the paper's schedule: MASK with 9e-6, replacement with 1e-6 per token."""
    sched = MaskReplaceScheduler(small_layout)
    draws = 400_000
    x0 = torch.zeros(draws, small_layout.seq_len, dtype=torch.long)
    x0[:, small_layout.n_video_tokens :] = small_layout.n_video_codes
    xs = sched.add_noise(x0, torch.zeros(draws, dtype=torch.long), torch.Generator().manual_seed(0))
    video = xs[:, : small_layout.n_video_tokens]
    n = video.numel()
    masks = int((video == small_layout.mask_id).sum())
    replaced = int(((video != 0) & (video != small_layout.mask_id)).sum())
    k = small_layout.n_video_codes
    for count, rate in ((masks, 9e-6), (replaced, 1e-6 * (k - 1) / k)):
        mean = rate * n
        assert stats.poisson.cdf(count, mean) > 1e-4 and stats.poisson.sf(count - 1, mean) > 1e-4, (
            count,
            mean,
        )


def _reverse_case(layout: TokenLayout, seed: int):
    """Logits and an x_t with masked tokens, confident stays, confident switches and both modalities."""
    gen = torch.Generator().manual_seed(seed)
    scale = [0.5, 1.0, 2.0, 4.0][seed % 4]
    x_t = torch.tensor([[layout.mask_id, 3, 5, layout.mask_id, 7, 1, layout.mask_id, 12, 14]])
    video = scale * torch.randn(1, layout.n_video_tokens, layout.n_video_codes, generator=gen)
    action = scale * torch.randn(1, layout.n_action_tokens, layout.n_action_bins, generator=gen)
    video[0, 1, 3] += 2.0
    video[0, 2, 0] += 3.0
    return x_t, video, action


CASES = [  # (t, stride, truncation_r)
    (50, 1, 0.88),
    (99, 1, 0.88),
    (0, 1, 0.88),
    (98, 1, 0.5),
    (60, 10, None),
    (3, 5, 0.7),
    (90, 1, 0.95),
    (20, 3, 0.3),
]


@pytest.mark.parametrize("schedule", [{}, WIDE_REPLACE], ids=["paper", "wide-replace"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_reverse_step_frequencies_match_the_posterior(small_layout, make_schedulers, pvalue, schedule, case):
    t, stride, r = CASES[case]
    fast_s, ref_s = make_schedulers(small_layout, **schedule)
    x_t, video, action = _reverse_case(small_layout, case)
    t_prev = max(t - stride, -1)
    probs = ref_s.reference.sampling_probs(video, action, x_t, torch.tensor([t]), torch.tensor([t_prev]), r)[0]
    tt, tp = torch.full((DRAWS,), t), torch.full((DRAWS,), t_prev)
    g = torch.Generator().manual_seed(100 + case)
    xs = fast_s.step(
        video.expand(DRAWS, -1, -1),
        action.expand(DRAWS, -1, -1),
        x_t.expand(DRAWS, -1),
        tt,
        tp,
        g,
        1.0 if r is None else r,
    )
    assert small_layout.is_valid(xs)
    for n in range(x_t.shape[1]):
        counts = np.bincount(xs[:, n].numpy(), minlength=small_layout.num_classes)
        assert pvalue(counts, probs[:, n].numpy()) > P_MIN, (t, stride, r, n)


def test_reference_gumbel_sampler_matches_its_own_posterior(small_layout, make_schedulers, pvalue):
    _, ref_s = make_schedulers(small_layout, **WIDE_REPLACE)
    x_t, video, action = _reverse_case(small_layout, 1)
    probs = ref_s.reference.sampling_probs(video, action, x_t, torch.tensor([40]), torch.tensor([39]), 0.88)[0]
    xs = ref_s.step(
        video.expand(DRAWS, -1, -1),
        action.expand(DRAWS, -1, -1),
        x_t.expand(DRAWS, -1),
        torch.full((DRAWS,), 40),
        generator=torch.Generator().manual_seed(5),
    )
    for n in range(x_t.shape[1]):
        counts = np.bincount(xs[:, n].numpy(), minlength=small_layout.num_classes)
        assert pvalue(counts, probs[:, n].numpy()) > P_MIN


def test_strided_posterior_is_the_exact_bayes_posterior():
    """With x0 known, the strided step t → t-s is q(x_{t-s} | x_t, x0) ∝ q(x_t | x_{t-s}) q(x_{t-s} | x0)."""
    k = 5
    layout = TokenLayout(k, 3, 4, 1)
    sched = MaskReplaceScheduler(layout, **WIDE_REPLACE)
    ref = ReferenceDiffusion(sched.tables, layout, dtype=torch.float64)
    x0 = torch.tensor([[2, 2, 2, 2, k]])
    x_t = torch.tensor([[2, 4, layout.mask_id, layout.mask_id, k]])
    for t, s in ((40, 7), (12, 12), (99, 50)):
        tt, tp = torch.tensor([t]), torch.tensor([max(t - s, -1)])
        c_t = sched.tables.coefficients(tt, tp, 0)
        got = ref.q_posterior(
            index_to_log_onehot(x0, layout.num_classes, torch.float64),
            index_to_log_onehot(x_t, layout.num_classes, torch.float64),
            tt,
            tp,
        ).exp()
        for n in range(4):
            prior = np.full(k + 1, c_t.prev_replace.item())  # q(x_{t-s} = j | x0 = 2) over codes, MASK
            prior[2] += c_t.prev_keep.item()
            prior[k] = c_t.prev_mask.item()
            j = x_t[0, n].item()
            like = np.full(k + 1, c_t.replace.item())  # q(x_t = j | x_{t-s} = i)
            if j == layout.mask_id:
                like[:k], like[k] = c_t.mask.item(), 1.0
            else:
                like[j] += c_t.keep.item()
                like[k] = 0.0
            want = prior * like / (prior * like).sum()
            have = torch.cat([got[0, :k, n], got[0, -1:, n]]).numpy()
            np.testing.assert_allclose(have, want, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_same_seed_same_samples(small_layout, impl):
    sched = MaskReplaceScheduler(small_layout, impl=impl, **WIDE_REPLACE)
    x_t, video, action = _reverse_case(small_layout, 2)
    b = 64
    args = (video.expand(b, -1, -1), action.expand(b, -1, -1), x_t.expand(b, -1), torch.full((b,), 70))
    first = sched.step(*args, generator=torch.Generator().manual_seed(7))
    again = sched.step(*args, generator=torch.Generator().manual_seed(7))
    other = sched.step(*args, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, again) and not torch.equal(first, other)
    x0 = torch.tensor([[0, 5, 11, 3, 3, 7, 12, 16, 14]]).expand(b, -1)
    noisy = [sched.add_noise(x0, torch.full((b,), 50), torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(noisy[0], noisy[1]) and not torch.equal(noisy[0], noisy[2])


@pytest.mark.parametrize("stride", [1, 7, 100])
def test_sampling_loop_runs_the_strided_chain(small_layout, stride):
    sched = MaskReplaceScheduler(small_layout)
    target = torch.tensor([4, 4, 9, 1, 0, 11, 13, 12, 16])
    calls: list[int] = []

    def denoise(x_t, t):
        calls.append(int(t[0]))
        assert small_layout.is_valid(x_t)
        v = torch.full((x_t.shape[0], 6, 12), -4.0).scatter(2, target[None, :6, None].expand(x_t.shape[0], -1, 1), 4.0)
        a = torch.full((x_t.shape[0], 3, 5), -4.0).scatter(
            2, (target[None, 6:, None] - 12).expand(x_t.shape[0], -1, 1), 4.0
        )
        return v, a

    out = sched.sample(denoise, 32, torch.Generator().manual_seed(0), stride=stride)
    assert calls == list(range(99, -1, -stride))
    assert small_layout.is_valid(out) and not (out == small_layout.mask_id).any()
    assert (out == target).float().mean() > 0.95  # the truncated prediction is the target


def test_stride_timesteps_end_at_the_clean_data():
    sched = MaskReplaceScheduler(TokenLayout(4, 2, 2, 1))
    assert sched.timesteps(1)[:2] == [(99, 98), (98, 97)] and sched.timesteps(1)[-1] == (0, -1)
    assert sched.timesteps(30) == [(99, 69), (69, 39), (39, 9), (9, -1)]
    with pytest.raises(ValueError, match="stride"):
        sched.timesteps(0)


@pytest.mark.parametrize("stride", [1, 10])
def test_full_chains_of_both_implementations_agree(stride):
    """Two-sample test on whole reverse chains with a state-dependent toy denoiser (marginals and a joint)."""
    layout = TokenLayout(6, 3, 2, 1)
    gen = torch.Generator().manual_seed(0)
    w_v, w_a = torch.randn(layout.num_classes, 6, generator=gen), torch.randn(layout.num_classes, 3, generator=gen)

    def denoise(x, t):
        h = torch.nn.functional.one_hot(x, layout.num_classes).float()
        video = 1.5 * (h[:, :2] @ w_v) + 0.5 * (h[:, [1, 0]] @ w_v) + t[:, None, None] / 50.0
        return video, h[:, 2:] @ w_a + h[:, :1] @ w_a

    draws = 2000
    out = [
        MaskReplaceScheduler(layout, impl=impl).sample(denoise, draws, torch.Generator().manual_seed(1), stride)
        for impl in ("fast", "reference")
    ]
    for a, b in ((out[0][:, n], out[1][:, n]) for n in range(3)):
        table = np.stack([np.bincount(a.numpy(), minlength=10), np.bincount(b.numpy(), minlength=10)])
        assert stats.chi2_contingency(table[:, table.sum(0) > 0]).pvalue > P_MIN
    joint = [(x[:, 0] * 10 + x[:, 1]).numpy() for x in out]
    table = np.stack([np.bincount(j, minlength=100) for j in joint])
    assert stats.chi2_contingency(table[:, table.sum(0) > 0]).pvalue > P_MIN
