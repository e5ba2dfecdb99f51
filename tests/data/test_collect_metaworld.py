"""Real Meta-World collection with real offscreen rendering."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vpdd.data.collect import CollectionError, CollectSpec, collect_metaworld, episode_seed
from vpdd.data.episodes import EpisodeStore

pytestmark = pytest.mark.sim


def _spec(**kw):
    base = dict(tasks=["drawer-close-v3"], demos_per_task=2, max_steps=120, steps_after_success=3,
                resolution=32, crop=0.5417)
    base.update(kw)
    return CollectSpec(**base)


def test_two_demonstrations_are_real_and_reproducible(tmp_path):
    report = collect_metaworld(_spec(), tmp_path / "a", workers=1, progress=False)
    collect_metaworld(_spec(), tmp_path / "b", workers=1, progress=False)
    assert report["episodes"] == 2
    store = EpisodeStore(tmp_path / "a")
    for entry in store.entries:
        ep = store.load(entry)
        assert ep.frames.shape[1:] == (32, 32, 3) and ep.actions.shape[1] == 4 and ep.states.shape[1] == 39
        assert ep.meta["success"] and ep.success[-1] and ep.instruction == "Push and close a drawer."
        assert ep.frames.std() > 10  # a rendered scene, not a blank image
        assert np.abs(np.diff(ep.states[:, :3], axis=0)).sum() > 0.01  # the arm moved
        # the same seed gives identical bytes
        assert (tmp_path / "a" / entry["path"]).read_bytes() == (tmp_path / "b" / entry["path"]).read_bytes()
    assert (tmp_path / "a" / "index.json").read_bytes() == (tmp_path / "b" / "index.json").read_bytes()


def test_seeds_change_the_scene(tmp_path):
    from vpdd.envs.metaworld import MetaWorldEnv

    with MetaWorldEnv("drawer-close-v3", resolution=32) as env:
        a, b, a2 = env.reset(1)[4:7].copy(), env.reset(2)[4:7].copy(), env.reset(1)[4:7].copy()
    assert not np.allclose(a, b) and np.allclose(a, a2)
    assert episode_seed(0, "drawer-close-v3", 0) != episode_seed(0, "drawer-close-v3", 1)
    assert episode_seed(0, "drawer-close-v3", 0) == episode_seed(0, "drawer-close-v3", 0)


def test_failures_are_dropped_and_counted(tmp_path):
    # 5 steps is too short for any success: every attempt fails, and the collector says so.
    with pytest.raises(CollectionError, match="too few successful demonstrations"):
        collect_metaworld(_spec(max_steps=5, max_attempts_per_demo=1), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()  # nothing half-written
    report = collect_metaworld(_spec(max_steps=5, keep_failures=True, demos_per_task=1), tmp_path / "y", progress=False)
    assert report["failures"] == 1 and report["dropped_failures"] == 0
    summary = json.loads((tmp_path / "y" / "collection.json").read_text())
    assert summary["per_task"]["drawer-close-v3"]["failures"] == 1


def test_unknown_task_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown Meta-World tasks \\['pick-nose-v3'\\]"):
        _spec(tasks=["pick-nose-v3"])


def test_parallel_workers_give_the_same_bytes(tmp_path):
    spec = _spec(tasks=["drawer-close-v3", "button-press-topdown-v3"], demos_per_task=1)
    collect_metaworld(spec, tmp_path / "serial", workers=1, progress=False)
    collect_metaworld(spec, tmp_path / "parallel", workers=2, progress=False)
    for path in sorted((tmp_path / "serial").rglob("*.npz")):
        rel = path.relative_to(tmp_path / "serial")
        assert path.read_bytes() == (tmp_path / "parallel" / rel).read_bytes(), rel
