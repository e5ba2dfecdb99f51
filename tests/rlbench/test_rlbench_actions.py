"""Keyframe discovery on constructed trajectories, keyframe targets, rotations, and the pose <-> token round trip
bounded by the bin widths."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vpdd.models.actions import ActionDiscretizer
from vpdd.rlbench.keyframes import (
    PoseActionCoder,
    discover_keyframes,
    euler_to_quat,
    keyframe_targets,
    quat_to_euler,
    rotation_angle,
)


def _trajectory(n=20, change_at=10, still=(4, 5, 6, 7, 14, 15, 17, 18), speed=1.0):
    grip = np.where(np.arange(n) < change_at, 1.0, 0.0)
    vel = np.full((n, 7), speed)
    vel[list(still)] = 0.0
    return grip, vel


def test_keyframes_are_gripper_changes_stops_and_the_last_frame():
    grip, vel = _trajectory()
    # 4: the arm stops (frames 5-7 are the same pause, inside the stop buffer); 10: the gripper closes;
    # 14: a second stop; 17: still, but within 4 frames of the stop at 14; 18 (= T-2) never counts; 19: last
    assert discover_keyframes(grip, vel) == [4, 10, 14, 19]
    assert discover_keyframes(grip, vel, stop_buffer=2) == [4, 7, 10, 14, 17, 19]  # a shorter buffer: more stops
    vel[[4, 14]] = 0.09  # "near zero" is |v| <= stopping_delta
    assert discover_keyframes(grip, vel) == [4, 10, 14, 19]
    vel[:] = np.where(vel < 0.5, 0.11, vel)
    assert discover_keyframes(grip, vel) == [10, 19]  # just above the threshold: no stops at all


def test_a_stop_needs_a_steady_gripper_and_adjacent_final_keyframes_collapse():
    grip, vel = _trajectory(still=(9, 11))
    assert discover_keyframes(grip, vel) == [10, 19]  # 9 and 11 are next to the gripper change: not stops
    grip, vel = _trajectory(change_at=18, still=())
    assert discover_keyframes(grip, vel) == [19]  # the change at T-2 and the last frame: only the last is kept
    assert discover_keyframes(np.ones(1), np.zeros((1, 7))) == []


def test_keyframe_targets_are_the_next_keyframes_then_the_last_one_held():
    t = keyframe_targets([4, 10, 14, 19], 20, 4)
    assert t.shape == (20, 4)
    assert t[0].tolist() == [4, 10, 14, 19] and t[3].tolist() == [4, 10, 14, 19]
    assert t[4].tolist() == [10, 14, 19, 19]  # a keyframe's own step targets the following ones
    assert t[15].tolist() == [19, 19, 19, 19] and t[19].tolist() == [19, 19, 19, 19]
    with pytest.raises(ValueError, match="no keyframes"):
        keyframe_targets([], 5, 4)


def test_rotations_known_values_and_round_trip():
    s = np.sqrt(0.5)
    np.testing.assert_allclose(quat_to_euler(np.array([0, 0, s, s])), [0, 0, 90], atol=1e-9)
    np.testing.assert_allclose(np.abs(quat_to_euler(np.array([1.0, 0, 0, 0]))), [180, 0, 0], atol=1e-9)
    np.testing.assert_allclose(euler_to_quat(np.array([0.0, 90.0, 0.0])), [0, s, 0, s], atol=1e-12)
    rng = np.random.default_rng(0)
    q = rng.normal(size=(500, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    e = quat_to_euler(q)
    assert np.all(np.abs(e) <= 180 + 1e-9) and np.all(np.abs(e[:, 1]) <= 90 + 1e-9)
    assert rotation_angle(euler_to_quat(e), q).max() < 1e-4
    lock = euler_to_quat(np.array([30.0, 90.0, 10.0]))  # gimbal lock: another triple, the same rotation
    assert rotation_angle(euler_to_quat(quat_to_euler(lock)), lock) < 1e-4


def _poses(rng, n):
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    xyz = rng.uniform([-0.3, -0.5, 0.6], [0.7, 0.5, 1.6], (n, 3))
    return np.concatenate([xyz, q], axis=1), rng.integers(0, 2, n).astype(float)


@pytest.mark.parametrize("resolution", [1.0, 2.0])
def test_pose_round_trip_is_bounded_by_the_bin_width(resolution):
    rng = np.random.default_rng(1)
    pose, grip = _poses(rng, 800)
    coder = PoseActionCoder.fit_poses(pose, n_bins=360, chunk=4, rotation_resolution=resolution)
    bins = coder.encode_pose(pose, grip)
    assert bins.shape == (800, 7) and bins.min() >= 0 and bins.max() < 360
    assert bins[:, 3:6].max() < 360 / resolution and set(np.unique(bins[:, 6])) == {0, 1}
    back, g = coder.decode_pose(bins)
    for d in range(3):
        err = np.abs(back[:, d] - pose[:, d])
        assert np.all(err <= coder.bin_width(d, bins[:, d]) + 1e-12), d
    assert rotation_angle(back[:, 3:], pose[:, 3:]).max() <= 1.5 * resolution + 1e-6
    np.testing.assert_allclose(np.linalg.norm(back[:, 3:], axis=1), 1.0)
    assert np.array_equal(g, grip)
    # unseen poses inside the fitted range are bounded the same way
    test_pose, test_grip = _poses(np.random.default_rng(2), 200)
    inside = np.all((test_pose[:, :3] >= pose[:, :3].min(0)) & (test_pose[:, :3] <= pose[:, :3].max(0)), axis=1)
    tb = coder.encode_pose(test_pose[inside], test_grip[inside])
    tback, _ = coder.decode_pose(tb)
    for d in range(3):
        assert np.all(np.abs(tback[:, d] - test_pose[inside, d]) <= coder.bin_width(d, tb[:, d]) + 1e-12)


def test_rotation_classes_wrap_at_180_degrees_and_decode_to_their_angle():
    pose, grip = _poses(np.random.default_rng(3), 50)
    coder = PoseActionCoder.fit_poses(pose)
    vec = np.zeros((3, 7))
    vec[:, 3] = [179.7, -179.8, 180.0]
    assert coder.encode(vec)[:, 3].tolist() == [0, 0, 0]  # +180 = -180 = class 0 (PerAct's 360 -> 0)
    vec[:, 3] = [-0.4, 0.6, 44.5]
    assert coder.encode(vec)[:, 3].tolist() == [180, 181, 224]  # halves round to even, as numpy
    bins = np.array([[0, 0, 0, 90, 180, 270, 1]])
    np.testing.assert_allclose(coder.decode(bins)[0, 3:6], [-90, 0, 90])


def test_the_coder_serialises_and_loads_as_a_generic_discretizer():
    pose, grip = _poses(np.random.default_rng(4), 300)
    coder = PoseActionCoder.fit_poses(pose, n_bins=360, chunk=4)
    data = json.loads(json.dumps(coder.to_dict()))
    again = PoseActionCoder.from_dict(data)
    assert np.array_equal(again.encode_pose(pose, grip), coder.encode_pose(pose, grip))
    generic = ActionDiscretizer.from_dict(data)  # what the checkpoint loader builds
    bins = coder.encode_pose(pose, grip)
    np.testing.assert_allclose(generic.decode(bins), coder.decode(bins))
    tokens = bins[:4].reshape(1, 28)
    act = coder.decode_chunk_poses(tokens)
    assert act.shape == (1, 4, 8)
    with pytest.raises(ValueError, match="not an RLBench keyframe action coder"):
        PoseActionCoder.from_dict(ActionDiscretizer.fit(pose[:, :4], n_bins=8).to_dict())
    with pytest.raises(ValueError, match="divisor of 360"):
        PoseActionCoder.fit_poses(pose, rotation_resolution=7.0)
    with pytest.raises(ValueError, match="at most n_bins"):
        PoseActionCoder.fit_poses(pose, n_bins=100, rotation_resolution=1.0)
