"""Shared fixtures for the discrete-diffusion tests: small layouts, both implementations, a frequency test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from vpdd.diffusion import MaskReplaceScheduler, TokenLayout


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Fixed seed; one intra-op thread (these tensors are small, and on a loaded 2-core machine every
    multi-threaded op waits for a descheduled worker). The previous thread count is restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_layout() -> TokenLayout:
    return TokenLayout(n_video_codes=12, n_action_bins=5, n_video_tokens=6, n_action_tokens=3)


@pytest.fixture
def make_schedulers():
    """(fast, reference) schedulers over one layout and schedule."""

    def make(layout: TokenLayout, **kwargs) -> tuple[MaskReplaceScheduler, MaskReplaceScheduler]:
        return (
            MaskReplaceScheduler(layout, impl="fast", **kwargs),
            MaskReplaceScheduler(layout, impl="reference", **kwargs),
        )

    return make


def frequency_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    """Chi-square p-value of observed counts against probabilities; classes expecting < 5 draws are pooled,
    and a pool expecting < 5 is checked by its Poisson upper tail instead (chi-square is wrong there)."""
    counts, probs = np.asarray(counts, dtype=float), np.asarray(probs, dtype=float)
    assert counts[probs == 0].sum() == 0, "a draw landed on a class of probability 0"
    expected = probs / probs.sum() * counts.sum()
    big = expected >= 5
    obs, exp = list(counts[big]), list(expected[big])
    rest_obs, rest_exp = counts[~big].sum(), expected[~big].sum()
    tail = 1.0
    if rest_exp >= 5:
        obs.append(rest_obs)
        exp.append(rest_exp)
    elif rest_obs > 0:
        tail = float(stats.poisson.sf(rest_obs - 1, rest_exp))
    if len(obs) < 2:
        return tail
    obs_a, exp_a = np.array(obs), np.array(exp)
    return min(float(stats.chisquare(obs_a, exp_a * obs_a.sum() / exp_a.sum()).pvalue), tail)


@pytest.fixture
def pvalue():
    return frequency_pvalue
