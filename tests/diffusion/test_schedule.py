"""The schedule: the released code's numbers, transitions that are distributions, and stride composition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vpdd.diffusion import ScheduleTables, TokenLayout
from vpdd.diffusion.reference import ReferenceDiffusion, index_to_log_onehot
from vpdd.diffusion.schedule import (
    cumulative_keep_rates,
    cumulative_mask_rates,
    one_step_rates,
    transition_rates,
)

T = 100


def test_cumulative_rates_match_the_released_code():
    keep, mask = cumulative_keep_rates(T, 0.99999, 0.000009), cumulative_mask_rates(T, 0.000009, 0.99999)
    assert keep.shape == mask.shape == (T + 1,)
    assert keep[-1] == 1.0 and mask[-1] == 0.0  # the identity entry used when t-1 = -1
    np.testing.assert_allclose([keep[0], keep[49], keep[99]], [0.99999, 0.505050, 9e-6], rtol=1e-5)
    np.testing.assert_allclose([mask[0], mask[49], mask[99]], [9e-6, 0.494949, 0.99999], rtol=1e-5)
    np.testing.assert_allclose(1 - keep[:-1] - mask[:-1], 1e-6, rtol=1e-6)  # the replace mass is tiny
    alpha, gamma, _ = one_step_rates(keep, mask)
    np.testing.assert_allclose([alpha[1], alpha[99], gamma[99]], [0.989899, 8.902e-4, 0.999011], rtol=1e-4)
    np.testing.assert_allclose([alpha[0], gamma[0]], [keep[0], mask[0]], rtol=1e-9)


@pytest.mark.parametrize("n_codes", [2048, 48, 7])
def test_transition_rows_are_distributions(n_codes):
    tables = ScheduleTables.build(T, n_codes, n_codes)
    t = torch.arange(T)
    for t_prev in (t - 1, (t - 3).clamp(min=-1), torch.full_like(t, -1)):
        for m in (0, 1):
            c = tables.coefficients(t, t_prev, m)
            for keep, rep, mask in (
                (c.cum_keep, c.cum_replace, c.cum_mask),
                (c.keep, c.replace, c.mask),
                (c.prev_keep, c.prev_replace, c.prev_mask),
            ):
                assert (keep >= 0).all() and (rep >= 0).all() and (mask >= 0).all()
                torch.testing.assert_close(keep + n_codes * rep + mask, torch.ones_like(keep), rtol=0, atol=1e-12)


def test_reference_q_pred_columns_are_distributions_within_a_modality():
    layout = TokenLayout(9, 4, 3, 2)
    ref = ReferenceDiffusion(ScheduleTables.build(T, 9, 4), layout, dtype=torch.float64)
    x = torch.tensor([[0, 5, layout.mask_id, 9, layout.mask_id]])
    for t in (0, 1, 50, 99, -1):
        probs = ref.q_pred(index_to_log_onehot(x, layout.num_classes, torch.float64), torch.tensor([t])).exp()[0]
        video = torch.cat([probs[:9, :3], probs[-1:, :3]]).sum(0)
        action = torch.cat([probs[9:13, 3:], probs[-1:, 3:]]).sum(0)
        torch.testing.assert_close(video[:2], torch.ones(2, dtype=torch.float64), atol=1e-9, rtol=0)
        torch.testing.assert_close(action[:1], torch.ones(1, dtype=torch.float64), atol=1e-9, rtol=0)


def _matrix(keep: float, rep: float, mask: float, k: int) -> np.ndarray:
    """Column-stochastic (K+1)x(K+1) mask-and-replace matrix: column = source class, MASK last."""
    q = np.full((k + 1, k + 1), 0.0)
    q[:k, :k] = rep
    q[np.arange(k), np.arange(k)] += keep
    q[k, :k] = mask
    q[k, k] = 1.0
    return q


def test_strided_transition_composes_with_the_cumulative_schedule():
    """Q_{s→t} · Q̄_s = Q̄_t: the identity strided sampling is built on."""
    k, tables = 6, ScheduleTables.build(T, 6, 6, att_1=0.9, att_T=0.05, ctt_1=0.05, ctt_T=0.9)
    total = tables.cum_replace_total
    for t, s in ((10, 9), (50, 40), (99, 0), (7, -1)):
        keep, mask, rep = transition_rates(tables.cum_keep, tables.cum_mask, np.array([t]), np.array([s]))
        step = _matrix(keep[0], rep[0] / k, mask[0], k)
        si = s if s >= 0 else T
        np.testing.assert_allclose(
            step @ _matrix(tables.cum_keep[si], total[si] / k, tables.cum_mask[si], k),
            _matrix(tables.cum_keep[t], total[t] / k, tables.cum_mask[t], k),
            atol=1e-12,
        )


def test_stride_one_transitions_equal_the_one_step_buffers_bit_for_bit():
    tables = ScheduleTables.build(T, 2048, 48)
    buffers = tables.log_tables()
    t = torch.arange(T)
    step = tables.transition_log_tables(t, t - 1)
    for key in ("log_at", "log_ct", "log_bt_obs", "log_bt_act", "log_1_min_ct"):
        assert torch.equal(step[key], buffers[key]), key
    assert torch.isinf(buffers["log_cumprod_bt_obs"][-1]) and buffers["log_cumprod_at"][-1] == 0


def test_coefficients_equal_the_float64_rate_functions():
    tables = ScheduleTables.build(T, 2048, 48)
    t = torch.tensor([0, 1, 50, 99, 99])
    t_prev = torch.tensor([-1, 0, 41, 98, -1])
    keep, mask, rep = transition_rates(tables.cum_keep, tables.cum_mask, t.numpy(), t_prev.numpy())
    c = tables.coefficients(t, t_prev, 1)
    assert c.keep.dtype == torch.float64
    assert np.array_equal(c.keep.numpy(), keep) and np.array_equal(c.mask.numpy(), mask)
    assert np.array_equal(c.replace.numpy(), rep / 48) and np.array_equal(c.cross_replace.numpy(), rep / 2048)
    assert c.prev_keep[0] == 1 and c.prev_mask[0] == 0 and c.prev_replace[0] == 0  # the identity entry
