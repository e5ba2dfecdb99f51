"""The policy through LeRobot's conventions (docs/policy.md): a batch dict with ``observation.images.<key>``
(or ``observation.image``), ``observation.state`` and ``task`` gives the same actions as vpdd's arguments,
and the checkpoint directory is ``config.json`` beside ``model.safetensors``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

# The GPT-2 action network imports triton; triton imported after MuJoCo's EGL/llvmpipe has loaded its LLVM
# (tests/data/test_collect_metaworld.py renders in this process) crashes it (see vpdd/eval/video_quality.py).
# Importing it while the tests are collected, before any rendering, avoids that.
import transformers.models.gpt2.modeling_gpt2  # noqa: F401

from vpdd.data.episodes import EpisodeStore
from vpdd.policy import PolicyError, VPDDPolicy


@pytest.fixture(scope="module")
def episode(trained):
    store = EpisodeStore(trained["robot"])
    return store.load(store.select(["reach-v3"], per_task=1)[0])


def _chw(frames: np.ndarray) -> torch.Tensor:
    """LeRobot's image convention: float32 (B, 3, H, W) in [0, 1]."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0


def test_select_action_on_a_lerobot_batch_matches_the_vpdd_arguments(trained, episode):
    frames = episode.frames[:6]
    ours = VPDDPolicy.from_pretrained(trained["policy"], sampling_stride=5)
    theirs = VPDDPolicy.from_pretrained(trained["policy"], sampling_stride=5)
    ours.reset(seed=3)
    theirs.reset(seed=3)
    for t in range(len(frames)):
        a = ours.select_action({"image": frames[t]}, episode.instruction)
        batch = {"observation.images.corner2": _chw(frames[t : t + 1]), "observation.state": torch.zeros(1, 4),
                 "task": [episode.instruction]}
        b = theirs.select_action(batch)  # a batch of 1 in, (1, D) out, as LeRobot's policies do
        assert b.shape == (1, *a.shape)
        np.testing.assert_array_equal(a, b[0])
    chunk = theirs.predict_action_chunk({"observation.image": frames[:1], "task": episode.instruction})
    assert chunk.shape == (1, theirs.chunk, theirs.action_dim)


def test_lerobot_batches_are_checked(trained, episode):
    policy = VPDDPolicy.from_pretrained(trained["policy"], sampling_stride=5)
    two = {"observation.images.a": _chw(episode.frames[:1]), "observation.images.b": _chw(episode.frames[:1]),
           "task": ["x"]}
    with pytest.raises(PolicyError, match="exactly one camera"):
        policy.select_action(two)
    with pytest.raises(PolicyError, match="no 'task'"):
        policy.select_action({"observation.image": _chw(episode.frames[:1])})
    with pytest.raises(PolicyError, match="instruction: required"):
        policy.select_action({"image": episode.frames[0]})


def test_checkpoint_is_config_json_beside_model_safetensors(trained):
    names = {p.name for p in trained["policy"].iterdir()}
    assert {"config.json", "model.safetensors"} <= names
    assert json.loads((trained["policy"] / "config.json").read_text())["kind"] == "vpdd-policy"
