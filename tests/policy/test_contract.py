"""The policy contract (LeRobot style), one set of tests over every policy: ``VPDDPolicy`` (Meta-World-like
synthetic episodes), ``RLBenchPolicy`` (generated PerAct episodes, four cameras, keyframe actions) and the
behaviour-cloning baseline ``BCPolicy`` (the same episodes as VPDDPolicy).
Shared: forward leaves the batch alone, select_action's queue and frame history, reset, save/load round trip,
unseen instructions, bad input. Where BCPolicy differs by design it is said in the test: its actions are the
argmax bins (the seed does not change them) and it refuses an instruction it was not trained on (a learned
task embedding, no text encoder). Then what only VPDDPolicy has: batched environments, explicit windows,
video prediction, video-only checkpoints."""

from __future__ import annotations

import copy
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vpdd.bc import BCPolicy
from vpdd.data.episodes import EpisodeStore
from vpdd.policy import PolicyError, VPDDPolicy
from vpdd.rlbench.policy import RLBenchPolicy
from vpdd.runtime.checkpoint import checkpoint_hash


def _rlbench_artefacts():
    """tests/rlbench/artefacts.py, the module tests/rlbench/conftest.py loads (one build per session)."""
    name = "vpdd_test_rlbench_artefacts"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "rlbench" / "artefacts.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@dataclass
class Case:
    """One policy class with its tiny checkpoint and what the shared tests feed it."""

    cls: type
    path: Path
    obs: Callable[[int], Any]  # the observation at step s of the test episode
    window: Callable[[int], np.ndarray]  # the frames the prediction made at step s must see
    instruction: str
    batch: Callable[[], dict[str, Any]]  # a training batch for forward
    action_dim: int
    bad: list[tuple[Callable[[Any], Any], str]] = field(default_factory=list)  # (call on a policy, message)

    @property
    def diffusion(self) -> bool:
        """A VPDD policy (a reverse diffusion); False for the BC baseline."""
        return self.cls is not BCPolicy

    def load(self, **kwargs: Any):
        if not self.diffusion:
            kwargs.pop("sampling_stride", None)  # no reverse diffusion to stride
        return self.cls.from_pretrained(self.path, **kwargs)


def _window_index(s: int) -> np.ndarray:
    """The window ending at step s, the first frame repeated at the start (the token cache's convention)."""
    return np.maximum(np.arange(s - 3, s + 1), 0)


def _vpdd_case(trained) -> Case:
    store = EpisodeStore(trained["robot"])
    ep = store.load(store.select(["reach-v3"], per_task=1)[0])

    def batch():
        window = np.stack([ep.frames[0]] * 4)
        return {
            "history_frames": np.stack([window, window]),
            "target": torch.randint(0, 32, (2, 1, 4, 4)),
            "actions": np.stack([ep.actions[0:4], ep.actions[4:8]]),
            "instruction": [ep.instruction, "a never seen instruction"],
            "generator": torch.Generator().manual_seed(0),
        }

    return Case(
        VPDDPolicy, trained["policy"], obs=lambda s: {"image": ep.frames[s]},
        window=lambda s: ep.frames[_window_index(s)][None], instruction=ep.instruction, batch=batch, action_dim=4,
        bad=[
            (lambda p: p.select_action(np.zeros((32, 32, 3), np.uint8), ep.instruction),
             r"uint8 frames \(16, 16, 3\)"),
            (lambda p: p.select_action(ep.frames[0].astype(np.float32), ep.instruction), "uint8"),
        ],
    )


def _rlbench_case(trained) -> Case:
    from vpdd.rlbench.reader import list_episodes, load_episode

    cams = _rlbench_artefacts().CAMERAS
    ep = load_episode(list_episodes(trained["data"], ["push_button"])[0], cams)
    views = lambda s: {c: ep.frames[c][s] for c in cams}  # noqa: E731

    def batch():
        windows = np.stack([ep.frames[c][_window_index(0)] for c in cams])  # (V, W, S, S, 3)
        rows = np.array([[1, 3, 5, 7], [2, 4, 6, 8]])
        return {
            "history_frames": np.stack([windows, windows]),
            "target": torch.randint(0, 32, (2, len(cams), 1, 4, 4)),
            "actions": np.concatenate([ep.gripper_pose[rows], ep.gripper_open[rows][..., None]], axis=-1),
            "instruction": [ep.instruction, "a never seen instruction"],
            "generator": torch.Generator().manual_seed(0),
        }

    return Case(
        RLBenchPolicy, trained["policy"], obs=views,
        window=lambda s: np.stack([ep.frames[c][_window_index(s)] for c in cams]), instruction=ep.instruction,
        batch=batch, action_dim=8,
        bad=[
            (lambda p: p.select_action({c: f for c, f in views(0).items() if c != "wrist"}, ep.instruction),
             r"missing cameras \['wrist'\]"),
            (lambda p: p.select_action({c: f.astype(np.float32) for c, f in views(0).items()}, ep.instruction),
             "uint8"),
            (lambda p: p.select_action(ep.frames["front"][0], ep.instruction), "camera"),
            (lambda p: RLBenchPolicy.from_pretrained(trained["pretrain"]), "not an RLBench keyframe policy"),
        ],
    )


def _bc_case(trained, synthetic, root: Path) -> Case:
    from vpdd.bc.train import train_bc

    cfg = synthetic.config(**{"bc.steps": 4, "bc.batch_size": 4, "bc.log_every": 2, "bc.eval_every": 4,
                              "bc.checkpoint_every": 4, "bc.heldout_steps": 4, "bc.channels": [8], "bc.hidden": 16})
    train_bc(cfg, robot=trained["robot"], out=root / "bc", params_file=None, progress=False)
    vpdd = _vpdd_case(trained)
    store = EpisodeStore(trained["robot"])
    ep = store.load(store.select(["reach-v3"], per_task=1)[0])

    def batch():
        window = np.stack([ep.frames[0]] * 4)
        return {"history_frames": np.stack([window, window]), "actions": np.stack([ep.actions[0:4], ep.actions[4:8]]),
                "instruction": [ep.instruction, ep.instruction]}

    return Case(BCPolicy, root / "bc", obs=vpdd.obs, window=vpdd.window, instruction=ep.instruction, batch=batch,
                action_dim=4, bad=[*vpdd.bad, (lambda p: BCPolicy.from_pretrained(trained["policy"]), "vpdd-bc")])


@pytest.fixture(scope="module", params=["vpdd", "rlbench", "bc"])
def case(request) -> Case:
    if request.param == "vpdd":
        return _vpdd_case(request.getfixturevalue("trained"))
    if request.param == "bc":
        return _bc_case(request.getfixturevalue("trained"), request.getfixturevalue("synthetic"),
                        request.getfixturevalue("tmp_path_factory").mktemp("bc"))
    synthetic = request.getfixturevalue("synthetic")
    root = request.getfixturevalue("tmp_path_factory").mktemp("rlbench")
    return _rlbench_case(_rlbench_artefacts().trained(synthetic, root))


def _counting(policy) -> list[tuple[np.ndarray, np.ndarray]]:
    """Record (window, predicted chunk) of every prediction the policy makes."""
    calls: list[tuple[np.ndarray, np.ndarray]] = []
    predict = policy._predict

    def counting(window, *args):
        out = predict(window, *args)
        calls.append((window.copy(), np.asarray(out.actions).reshape(-1, policy.chunk, out.actions.shape[-1])[0]))
        return out

    policy._predict = counting
    return calls


# ------------------------------------------------------------------------------------ the shared contract
def test_forward_returns_a_loss_and_does_not_modify_the_batch(case):
    policy = case.load()
    batch = case.batch()
    before = {k: copy.deepcopy(v) for k, v in batch.items() if k != "generator"}
    history_before = policy.scheduler.Lt_count.clone() if case.diffusion else None
    loss, info = policy.forward(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert {"kl_video", "kl_action"} <= set(info) if case.diffusion else "action_bin_acc" in info
    for k, v in before.items():
        now = batch[k]
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, now), k
        elif isinstance(v, np.ndarray):
            assert np.array_equal(v, now), k
        else:
            assert v == now, k
    if case.diffusion:
        assert torch.equal(policy.scheduler.Lt_count, history_before)  # eval mode: no importance-history update
    loss.backward()
    trained_part = policy.model.action if case.diffusion else policy.net
    assert any(p.grad is not None for p in trained_part.parameters())


def test_select_action_executes_a_queue_of_the_predicted_chunk(case):
    for execute in (1, 3):
        policy = case.load(execute_steps=execute, sampling_stride=5)
        calls = _counting(policy)
        policy.reset(seed=0)
        actions = [policy.select_action(case.obs(s), case.instruction) for s in range(7)]
        expected_calls = [s for s in range(7) if s % execute == 0]
        assert len(calls) == len(expected_calls)
        for s, a in enumerate(actions):
            window, chunk = calls[s // execute]
            assert a.shape == (case.action_dim,) and a.dtype == np.float32
            np.testing.assert_array_equal(a, chunk[s % execute])
        # the window of each prediction ends at the current frame; the first frame is repeated at the start
        for call, s in enumerate(expected_calls):
            np.testing.assert_array_equal(calls[call][0], case.window(s))


def test_reset_clears_the_queue_and_the_frame_history(case):
    policy = case.load(execute_steps=3, sampling_stride=5)
    calls = _counting(policy)
    policy.reset(seed=0)
    for s in range(2):
        policy.select_action(case.obs(s), case.instruction)
    assert policy.queued_actions == 1 and len(calls) == 1
    policy.reset()
    assert policy.queued_actions == 0
    policy.select_action(case.obs(5), case.instruction)
    assert len(calls) == 2 and policy.queued_actions == 2
    np.testing.assert_array_equal(calls[1][0], case.window(5)[:, [3, 3, 3, 3]])  # step 5 alone: a new episode


def test_save_and_load_round_trip_gives_identical_actions(case, tmp_path):
    policy = case.load()
    policy.save_pretrained(tmp_path / "copy")
    assert checkpoint_hash(tmp_path / "copy") == checkpoint_hash(case.path)  # same config and weights
    assert (tmp_path / "copy" / "lineage.json").is_file() and not (tmp_path / "copy" / "training_state.pt").exists()
    other = case.cls.from_pretrained(tmp_path / "copy")
    for p in (policy, other):
        p.reset(seed=11)
    a = [policy.select_action(case.obs(s), case.instruction) for s in range(3)]
    b = [other.select_action(case.obs(s), case.instruction) for s in range(3)]
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    other.reset(seed=12)
    c = [other.select_action(case.obs(s), case.instruction) for s in range(3)]
    # the seed matters for a sampled chunk; BC's argmax chunk is the same whatever the seed
    assert np.array_equal(np.stack(a), np.stack(c)) != case.diffusion


def test_predict_action_chunk_is_the_chunk_select_action_starts_from(case):
    policy = case.load(execute_steps=2, sampling_stride=5)
    policy.reset(seed=4)
    chunk = policy.predict_action_chunk(case.obs(0), case.instruction)  # does not record the frame
    assert chunk.shape == (policy.chunk, case.action_dim) and np.isfinite(chunk).all()
    policy.reset(seed=4)
    first = [policy.select_action(case.obs(0), case.instruction) for _ in range(2)]
    np.testing.assert_array_equal(np.stack(first), chunk[:2])


def test_an_unseen_instruction_is_encoded_on_the_fly(case):
    policy = case.load()
    if not case.diffusion:  # a learned task embedding: an instruction it was not trained on is refused
        with pytest.raises(PolicyError, match="knows only"):
            policy.select_action(case.obs(0), "Pick up the red cube and put it in the bin.")
        return
    n = len(policy.table)
    policy.reset(seed=0)
    a = policy.select_action(case.obs(0), "Pick up the red cube and put it in the bin.")
    assert a.shape == (case.action_dim,) and len(policy.table) == n + 1


def test_bad_input_is_refused_with_a_policy_error(case):
    policy = case.load()
    for call, message in case.bad:
        with pytest.raises(PolicyError, match=message):
            call(policy)
    with pytest.raises(PolicyError, match="execute_steps"):
        case.load(execute_steps=5)
    with pytest.raises(PolicyError, match="batch"):
        policy.forward({k: v for k, v in case.batch().items() if k not in ("history", "history_frames")})


# ------------------------------------------------------------------------------------- VPDDPolicy only
@pytest.fixture(scope="module")
def episode(trained):
    store = EpisodeStore(trained["robot"])
    return store.load(store.select(["reach-v3"], per_task=1)[0])


@pytest.fixture
def policy(trained):
    return VPDDPolicy.from_pretrained(trained["policy"])


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


def test_a_video_only_checkpoint_predicts_video_but_no_actions(trained, episode):
    video_only = VPDDPolicy.from_pretrained(trained["pretrain"])
    with pytest.raises(PolicyError, match="fine-tune"):
        video_only.select_action(episode.frames[0], episode.instruction)
    assert video_only.predict_video(episode.frames[0], episode.instruction).shape == (4, 16, 16, 3)
