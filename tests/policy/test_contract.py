"""The policy contract (LeRobot style): forward leaves the batch alone, select_action's queue and frame
history, save/load round trip, batched use, video prediction, unseen instructions, bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from vpdd.data.episodes import EpisodeStore
from vpdd.policy import PolicyError, VPDDPolicy
from vpdd.runtime.checkpoint import checkpoint_hash


@pytest.fixture(scope="module")
def episode(trained):
    store = EpisodeStore(trained["robot"])
    return store.load(store.select(["reach-v3"], per_task=1)[0])


@pytest.fixture
def policy(trained):
    return VPDDPolicy.from_pretrained(trained["policy"])


def test_forward_returns_a_loss_and_does_not_modify_the_batch(policy, episode):
    window = np.stack([episode.frames[0]] * 4)
    batch = {
        "history_frames": np.stack([window, window]),
        "target": torch.randint(0, 32, (2, 1, 4, 4)),
        "actions": np.stack([episode.actions[0:4], episode.actions[4:8]]),
        "instruction": [episode.instruction, "a never seen instruction"],
        "generator": torch.Generator().manual_seed(0),
    }
    before = {k: copy.deepcopy(v) for k, v in batch.items() if k != "generator"}
    history_before = policy.scheduler.Lt_count.clone()
    loss, info = policy.forward(batch)
    assert loss.ndim == 0 and torch.isfinite(loss) and {"kl_video", "kl_action"} <= set(info)
    for k, v in before.items():
        now = batch[k]
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, now), k
        elif isinstance(v, np.ndarray):
            assert np.array_equal(v, now), k
        else:
            assert v == now, k
    assert torch.equal(policy.scheduler.Lt_count, history_before)  # eval mode: no importance-history update
    loss.backward()
    assert any(p.grad is not None for p in policy.model.action.parameters())


def test_select_action_executes_a_queue_of_the_predicted_chunk(trained, episode):
    for execute in (1, 3):
        policy = VPDDPolicy.from_pretrained(trained["policy"], execute_steps=execute, sampling_stride=5)
        calls = []
        predict = policy._predict

        def counting(window, texts, predict=predict, calls=calls):
            out = predict(window, texts)
            calls.append((window.copy(), out.actions.copy()))
            return out

        policy._predict = counting
        policy.reset(seed=0)
        actions = [policy.select_action({"image": episode.frames[s]}, episode.instruction) for s in range(7)]
        expected_calls = [s for s in range(7) if s % execute == 0]
        assert len(calls) == len(expected_calls)
        for s, a in enumerate(actions):
            call = s // execute
            window, chunk = calls[call]
            assert a.shape == (4,) and a.dtype == np.float32
            np.testing.assert_array_equal(a, chunk[0, s % execute])
        # the window of each prediction ends at the current frame; the first frame is repeated at the start
        for call, s in enumerate(expected_calls):
            idx = np.maximum(np.arange(s - 3, s + 1), 0)
            np.testing.assert_array_equal(calls[call][0][0], episode.frames[idx])


def test_save_and_load_round_trip_gives_identical_actions(policy, episode, tmp_path, trained):
    policy.save_pretrained(tmp_path / "copy")
    assert checkpoint_hash(tmp_path / "copy") == checkpoint_hash(trained["policy"])  # same config and weights
    assert (tmp_path / "copy" / "lineage.json").is_file() and not (tmp_path / "copy" / "training_state.pt").exists()
    other = VPDDPolicy.from_pretrained(tmp_path / "copy")
    for p in (policy, other):
        p.reset(seed=11)
    a = [policy.select_action(episode.frames[s], episode.instruction) for s in range(3)]
    b = [other.select_action(episode.frames[s], episode.instruction) for s in range(3)]
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    other.reset(seed=12)
    c = [other.select_action(episode.frames[s], episode.instruction) for s in range(3)]
    assert not np.array_equal(np.stack(a), np.stack(c))  # the seed matters


def test_batched_environments_and_explicit_windows(policy, episode):
    frames = np.stack([episode.frames[0], episode.frames[5]])
    policy.reset(seed=0)
    out = policy.select_action({"image": frames}, [episode.instruction, "Push the puck to a goal."])
    assert out.shape == (2, 4)
    with pytest.raises(PolicyError, match="reset"):
        policy.select_action(episode.frames[1], episode.instruction)  # 1 env in a 2-env episode
    chunk = policy.predict_action_chunk({"history": np.stack([episode.frames[0]] * 4)}, episode.instruction)
    assert chunk.shape == (4, 4) and np.isfinite(chunk).all()
    lo, hi = episode.actions.min(), episode.actions.max()
    assert chunk.min() >= lo - 1e-6 and chunk.max() <= hi + 1e-6  # decoded bins stay in the data's range


def test_predict_video_decodes_the_predicted_tokens(policy, episode):
    policy.reset(seed=0)
    video = policy.predict_video(episode.frames[3], episode.instruction)
    assert video.shape == (4, 16, 16, 3) and video.dtype == np.uint8
    policy.reset(seed=0)
    out = policy.predict(episode.frames[3], episode.instruction)
    from vpdd.tokenizer.model import to_uint8

    with torch.no_grad():
        ref = to_uint8(policy.tokenizer.decode(out.video_tokens)).numpy()[0]
    np.testing.assert_array_equal(video, ref)
    assert out.video_tokens.shape == (1, 1, 4, 4) and int(out.video_tokens.max()) < 32


def test_an_unseen_instruction_is_encoded_on_the_fly(policy, episode):
    n = len(policy.table)
    policy.reset(seed=0)
    a = policy.select_action(episode.frames[0], "Pick up the red cube and put it in the bin.")
    assert a.shape == (4,) and len(policy.table) == n + 1


def test_bad_input_and_a_video_only_checkpoint_are_refused(policy, trained, episode):
    with pytest.raises(PolicyError, match=r"uint8 frames \(16, 16, 3\)"):
        policy.select_action(np.zeros((32, 32, 3), np.uint8), episode.instruction)
    with pytest.raises(PolicyError, match="uint8"):
        policy.select_action(episode.frames[0].astype(np.float32), episode.instruction)
    with pytest.raises(PolicyError, match="execute_steps"):
        VPDDPolicy.from_pretrained(trained["policy"], execute_steps=5)
    video_only = VPDDPolicy.from_pretrained(trained["pretrain"])
    with pytest.raises(PolicyError, match="fine-tune"):
        video_only.select_action(episode.frames[0], episode.instruction)
    assert video_only.predict_video(episode.frames[0], episode.instruction).shape == (4, 16, 16, 3)
