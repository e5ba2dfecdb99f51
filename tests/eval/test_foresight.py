"""The foresight probe and the token scores of ``vpdd eval video`` (vpdd/eval/foresight.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vpdd.eval import foresight


def test_token_scores_count_changed_tokens_only_where_the_future_differs():
    history = torch.tensor([[0, 1, 2, 3], [5, 5, 5, 5]])
    true = torch.tensor([[0, 1, 9, 9], [5, 5, 5, 5]])  # two tokens change in the first window, none in the second
    predicted = torch.tensor([[0, 7, 9, 3], [5, 5, 5, 4]])
    s = foresight.token_scores(predicted, true, history)
    assert s["predicted_acc"].tolist() == [0.5, 0.75]
    assert s["predicted_changed_acc"][0] == 0.5 and np.isnan(s["predicted_changed_acc"][1])
    assert s["copy_last_acc"].tolist() == [0.5, 1.0] and s["changed_fraction"].tolist() == [0.5, 0.0]
    summary = foresight.summarise_tokens({"a": s})
    assert summary["per_task"]["a"]["predicted_changed_acc"] == 0.5  # the NaN window does not count


def test_expert_chunks_pad_past_the_end_with_the_hold_action():
    actions = np.arange(12, dtype=np.float32).reshape(3, 4)
    hold = np.array([0, 0, 0, 11], dtype=np.float32)
    chunks = foresight.expert_chunks(actions, np.array([0, 2]), 3, hold)
    assert chunks.shape == (2, 3, 4)
    np.testing.assert_array_equal(chunks[0], actions)
    np.testing.assert_array_equal(chunks[1], np.stack([actions[2], hold, hold]))


def test_the_network_reads_the_given_video_at_every_step_and_the_draws_do_not_change():
    from vpdd.diffusion import MaskReplaceScheduler, TokenLayout
    from vpdd.models.model import sample_tokens

    layout = TokenLayout(n_video_codes=6, n_action_bins=4, n_video_tokens=5, n_action_tokens=3)
    sched = MaskReplaceScheduler(layout, num_timesteps=10, impl="reference")
    seen = []

    def net(x_t, t, history, lang):
        seen.append(x_t[:, : layout.n_video_tokens].clone())
        g = torch.Generator().manual_seed(int(t[0]))
        return (torch.randn(x_t.shape[0], layout.n_video_tokens, 6, generator=g),
                torch.randn(x_t.shape[0], layout.n_action_tokens, 4, generator=g))

    history, lang = torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 3)
    video = torch.tensor([[1, 2, 3, 4, 5], [0, 0, 0, 0, 0]])
    joint = sample_tokens(net, sched, history, lang, torch.Generator().manual_seed(0))
    seen.clear()
    fixed = sample_tokens(net, sched, history, lang, torch.Generator().manual_seed(0), video=video)
    assert len(seen) == 10 and all(torch.equal(v, video) for v in seen)
    # the toy net's logits depend on t only, so the same generator gives the same chain either way
    assert torch.equal(joint, fixed)


@pytest.mark.slow  # the session's trained policy
def test_probe_modes_are_paired_and_masked_equals_explicit_mask_tokens(trained):
    from vpdd.data.episodes import EpisodeStore
    from vpdd.eval.video_quality import clip_windows
    from vpdd.policy import VPDDPolicy

    policy = VPDDPolicy.from_pretrained(trained["policy"], sampling_stride=5)
    store = EpisodeStore(trained["robot"])
    ep = store.load(store.select(None, per_task=1)[0])
    steps = np.array([0, 2, 4])
    hist, real, _ = clip_windows(ep.frames, steps, 20, policy.window)
    true = policy._encode_windows(real)
    a = foresight.probe_episode(policy, ep, steps, hist, true, seed=3, batch_size=2)
    b = foresight.probe_episode(policy, ep, steps, hist, true, seed=3, batch_size=2)
    assert set(a) == {*foresight.MODES, "discretization"} and all(v.shape == (3,) for v in a.values())
    assert all(np.array_equal(a[k], b[k]) for k in a)  # reseeded per mode: repeatable
    mask = torch.full((3, policy.layout.n_video_tokens), policy.layout.mask_id)
    policy.reset(seed=3)
    explicit = policy.predict({"history": hist}, ep.instruction, foresight=mask).actions
    policy.reset(seed=3)
    named = policy.predict({"history": hist}, ep.instruction, foresight="masked").actions
    np.testing.assert_array_equal(explicit, named)
    with pytest.raises(ValueError, match="video tokens per sample"):
        policy.predict({"history": hist}, ep.instruction, foresight=mask[:, :2])
