"""The episode format: round trip, deterministic bytes, and clear errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest

from vpdd.data.episodes import DataFormatError, Episode, EpisodeStore, load_episode, save_episode, write_index


def _episode(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return Episode(
        frames=rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
        actions=rng.normal(size=(n, 4)).astype(np.float32),
        states=rng.normal(size=(n, 39)).astype(np.float32),
        success=np.arange(n) >= n - 2,
        meta={"task": "reach-v3", "seed": seed},
    )


def test_round_trip_and_same_bytes(tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    save_episode(a, _episode())
    save_episode(b, _episode())
    assert a.read_bytes() == b.read_bytes()
    loaded = load_episode(a)
    np.testing.assert_array_equal(loaded.frames, _episode().frames)
    assert loaded.meta == {"task": "reach-v3", "seed": 0} and len(loaded) == 5


def test_mismatched_lengths_are_rejected():
    ep = _episode()
    with pytest.raises(DataFormatError, match="actions must have 2 dims and 5 rows"):
        Episode(ep.frames, ep.actions[:3], ep.states, ep.success)


def test_truncated_and_foreign_files_name_the_file(tmp_path):
    path = tmp_path / "ep.npz"
    save_episode(path, _episode())
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataFormatError, match=str(path)):
        load_episode(path)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(DataFormatError, match="missing members"):
        load_episode(other)


def test_store_selects_per_task(tmp_path):
    entries = []
    for task in ("reach-v3", "push-v3"):
        for seed in (3, 1, 2):
            rel = f"{task}/episode_{seed}.npz"
            save_episode(tmp_path / rel, _episode(seed=seed))
            entries.append({"path": rel, "task": task, "seed": seed, "length": 5})
    write_index(tmp_path, entries)
    store = EpisodeStore(tmp_path)
    assert store.tasks == ["push-v3", "reach-v3"]
    chosen = store.select(["reach-v3"], per_task=2)
    assert [e["seed"] for e in chosen] == [1, 2]
    with pytest.raises(DataFormatError, match="3 episodes, 5 were asked for"):
        store.select(["reach-v3"], per_task=5)
    with pytest.raises(DataFormatError, match="no episodes for tasks"):
        store.select(["window-open-v3"])


def test_missing_or_empty_data_folder(tmp_path):
    with pytest.raises(DataFormatError, match="no such data folder"):
        EpisodeStore(tmp_path / "missing")
    with pytest.raises(DataFormatError, match="missing episode index"):
        EpisodeStore(tmp_path)
