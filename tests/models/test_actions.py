"""Action tokens: quantile bins + data-fitted gripper classes, round trip bounded by the bin width."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vpdd.models.actions import ActionDiscretizer


def metaworld_like(n: int = 3000, seed: int = 0) -> np.ndarray:
    """xyz with saturation at ±1 (the scripted experts are clipped), gripper in {-1, 1}."""
    rng = np.random.default_rng(seed)
    xyz = np.clip(rng.normal(0, 0.8, (n, 3)), -1, 1)
    grip = rng.choice([-1.0, 1.0], size=(n, 1))
    return np.concatenate([xyz, grip], 1).astype(np.float32)


def test_round_trip_error_is_bounded_by_the_bin_width():
    data = metaworld_like()
    disc = ActionDiscretizer.fit(data, n_bins=48, chunk=4)
    assert disc.kinds == ["quantile"] * 3 + ["classes"] and disc.values[3] == [-1.0, 1.0]
    test = metaworld_like(2000, seed=1)  # unseen values inside the fitted range
    bins = disc.encode(test)
    assert bins.min() >= 0 and bins.max() < 48
    err = np.abs(disc.decode(bins) - test)
    for d in range(3):
        width = disc.bin_width(d, bins[:, d])
        assert (err[:, d] <= width + 1e-6).all()
        assert width.max() < 0.2  # 48 quantile bins of a unit-scale distribution are narrow
    assert (err[:, 3] == 0).all()  # gripper classes decode exactly
    # saturated values decode exactly (the bin value is the mean of the fitted data in the bin)
    assert disc.decode(disc.encode(np.array([[-1.0, 1.0, -1.0, 1.0]])))[0].tolist() == [-1.0, 1.0, -1.0, 1.0]
    # out of range: the edge bins, decoding to the fitted extremes
    far = disc.decode(disc.encode(np.array([[-5.0, 5.0, 0.0, 0.3]])))[0]
    assert far[0] == -1.0 and far[1] == 1.0
    assert far[3] == 1.0  # an unseen gripper value maps to the nearest class


def test_gripper_classes_are_fitted_from_the_data_and_many_values_fall_back_to_bins():
    rng = np.random.default_rng(0)
    scripted = np.concatenate([rng.uniform(-1, 1, (500, 3)),
                               rng.choice([-1.0, 0.0, 0.6, 0.8, 1.0], (500, 1))], 1)
    disc = ActionDiscretizer.fit(scripted, n_bins=48)
    assert disc.values[3] == [-1.0, 0.0, 0.6, 0.8, 1.0]
    assert disc.decode(np.array([[0, 0, 0, 7]]))[0, 3] == 1.0  # a bin beyond the classes -> the last class
    continuous = rng.uniform(-1, 1, (500, 4))
    assert ActionDiscretizer.fit(continuous, n_bins=16).kinds == ["quantile"] * 4


def test_chunks_are_step_major_and_padded_with_a_hold_action():
    actions = np.array([[0.5, -0.5, 0.1, -1.0], [0.2, 0.2, 0.2, 1.0], [-0.3, 0.9, -0.9, 1.0]], np.float32)
    disc = ActionDiscretizer.fit(metaworld_like(), n_bins=48, chunk=4)
    chunks = disc.episode_chunks(actions)
    assert chunks.shape == (3, 16)
    decoded = disc.decode_chunk(chunks)  # (3, 4, 4)
    np.testing.assert_allclose(decoded[0, :3], disc.decode(disc.encode(actions)))
    np.testing.assert_allclose(decoded[1, :2], decoded[0, 1:3])
    hold = disc.decode(disc.encode(np.array([0.0, 0.0, 0.0, 1.0])))
    np.testing.assert_allclose(decoded[2, 1:], np.repeat(hold[None], 3, 0))  # zero motion, last gripper


def test_saved_in_json_exactly_and_nothing_written_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    disc = ActionDiscretizer.fit(metaworld_like(), n_bins=48)
    again = ActionDiscretizer.from_dict(json.loads(json.dumps(disc.to_dict())))
    x = metaworld_like(100, seed=3)
    assert np.array_equal(again.encode(x), disc.encode(x))
    assert np.array_equal(again.decode(disc.encode(x)), disc.decode(disc.encode(x)))
    assert list(tmp_path.iterdir()) == []


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="NaN"):
        ActionDiscretizer.fit(np.array([[np.nan, 0, 0, 1]]))
    disc = ActionDiscretizer.fit(metaworld_like(), n_bins=8)
    with pytest.raises(ValueError, match="4 dimensions"):
        disc.encode(np.zeros((2, 3)))
