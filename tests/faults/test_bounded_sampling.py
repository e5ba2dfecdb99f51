"""No input makes a sampling step spin, and SIGTERM ends a step that does not finish."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
from vpdd_kernels import sampling

from vpdd.diffusion.layout import TokenLayout
from vpdd.diffusion.scheduler import MaskReplaceScheduler
from vpdd.runtime.guard import StopFlag, TrainingInterrupted

LAYOUT = TokenLayout(n_video_codes=37, n_action_bins=5, n_video_tokens=5, n_action_tokens=3)


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    zv = 3 * torch.randn(2, 5, 37, generator=g)
    za = 3 * torch.randn(2, 3, 5, generator=g)
    x = torch.full((2, 8), LAYOUT.mask_id)
    return zv, za, x


@pytest.mark.parametrize("r", [0.0, -1.0, float("nan"), "0.5x"])
def test_a_truncation_r_that_could_never_accept_is_refused_at_once(r):
    zv, za, x = _problem()
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="truncation_r"):
        MaskReplaceScheduler(LAYOUT, num_timesteps=10, truncation_r=r)
    sched = MaskReplaceScheduler(LAYOUT, num_timesteps=10)
    with pytest.raises(ValueError, match=r"truncation_r=.*\(0, 1\]"):
        sched.sample(lambda x, t: (zv, za), 2, truncation_r=r)
    assert time.monotonic() - t0 < 5


def test_off_and_valid_values_still_sample():
    zv, za, x = _problem()
    sched = MaskReplaceScheduler(LAYOUT, num_timesteps=10)
    for r in (None, 1.0, 2.0, 0.88, 1e-6):
        out = sched.sample(lambda x, t: (zv, za), 2, generator=torch.Generator().manual_seed(0), truncation_r=r)
        assert out.shape == x.shape


def test_the_rejection_draw_is_bounded(monkeypatch):
    """With one round allowed, rows still rejected take the exact draw: the step ends, draws stay kept."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(64, 1, 37, generator=g) * 4
    p = torch.softmax(z.double(), -1).reshape(64, 37)
    lse = torch.logsumexp(z.reshape(64, 37).double(), -1)
    j = torch.zeros(64, dtype=torch.long)
    masked = torch.ones(64, dtype=torch.bool)
    u = torch.rand(64, dtype=torch.float64, generator=g)
    r = 0.05  # only the argmax is kept in most rows: many proposals are rejected
    monkeypatch.setattr(sampling, "MAX_REJECTION_ROUNDS", 1)
    out = sampling._draw_truncated(z.reshape(64, 37), lse, j, masked, u, r, g)
    assert torch.equal(out, p.argmax(1))  # the kept set is the argmax alone


def test_sigterm_interrupts_a_step_that_outlives_the_grace_period():
    t0 = time.monotonic()
    with pytest.raises(TrainingInterrupted, match="did not finish within"), StopFlag(grace_s=0.5) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        while True:  # a step that never reaches the loop's check
            time.sleep(0.01)
    assert stop.signal == signal.SIGTERM and time.monotonic() - t0 < 5


def test_a_step_that_reaches_its_check_saves_in_peace():
    with StopFlag(grace_s=0.3) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop.signal == signal.SIGTERM
        stop.disarm()  # what the training skeleton does before its final save
        time.sleep(0.6)  # no interrupt during the save
