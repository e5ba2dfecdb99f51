"""The actionless video of the fine-tuning tasks: frames only, scenes apart from demonstrations and evaluation,
and the robot token source it joins (real Meta-World for the rendering tests)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from vpdd.config import ConfigError, config_from_dict
from vpdd.data.collect import CollectSpec, collect_metaworld, episode_seed
from vpdd.data.episodes import ACTIONLESS_FORMAT, DataFormatError, EpisodeStore, save_frames_only, write_index
from vpdd.eval.scenes import (
    evaluation_scene_seeds,
    heldout_seed,
    reserved_for_task_video,
    scene_seeds,
    training_seeds,
)

VPDD = str(Path(sys.executable).with_name("vpdd"))
SYN = Path(__file__).resolve().parents[1] / "train" / "synthetic.py"


def _synthetic():
    import importlib.util

    name = "vpdd_test_synthetic"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SYN)
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


def _default_cfg(**data_overrides):
    from vpdd.config import compose

    raw = compose([], conf_dir=Path(__file__).resolve().parents[2] / "conf")
    for key, value in data_overrides.items():
        node = raw["data"]
        *head, last = key.split(".")
        for part in head:
            node = node[part]
        node[last] = value
    return config_from_dict(raw, source="test")


def test_reserved_seeds_hold_every_demonstration_attempt_and_every_evaluation_scene():
    cfg = _default_cfg()
    tasks = list(cfg.data.robot.tasks)
    reserved = reserved_for_task_video(cfg, tasks)
    r = cfg.data.robot
    for task in tasks:
        demos = {episode_seed(r.seed, task, a) for a in range(r.demos_per_task * r.max_attempts_per_demo)}
        closed_loop = {s for e in cfg.eval.seeds for s in scene_seeds(task, e, cfg.eval.episodes_per_task)}
        video = {heldout_seed(0, task, a) for a in range(6)}  # `vpdd eval video`'s default episodes x attempts
        assert demos | closed_loop | video <= reserved[task]
        # ... and the default task-video seeds (all its attempts) are none of them
        tv = cfg.data.task_video
        ours = {episode_seed(tv.seed, task, a) for a in range(tv.episodes_per_task * tv.max_attempts_per_episode)}
        assert ours.isdisjoint(reserved[task])
        # the video evaluation skips the task-video seeds in turn
        assert ours <= training_seeds(r, [task], task_video_cfg=tv)[task]
    assert set(evaluation_scene_seeds(cfg, tasks)) == set(tasks)


def test_a_task_video_seed_equal_to_the_demonstrations_is_refused():
    with pytest.raises(ConfigError, match="task_video.seed"):
        _default_cfg(**{"task_video.seed": 0})


def test_an_actionless_store_feeds_the_tokenizer_and_refuses_action_readers(tmp_path):
    from vpdd.tokenizer.data import load_items, load_task_video_items

    syn = _synthetic()
    robot = syn.write_robot_root(tmp_path / "robot", demos=2)
    rng = np.random.default_rng(3)
    entries = []
    for k in range(3):
        rel = f"reach-v3/video_{k:04d}.npz"
        save_frames_only(tmp_path / "tv" / rel, syn.moving_square_video(rng, 20), {"task": "reach-v3", "seed": 50 + k})
        entries.append({"task": "reach-v3", "seed": 50 + k, "path": rel, "length": 20, "instruction": "reach"})
    write_index(tmp_path / "tv", entries, actionless=True)
    store = EpisodeStore(tmp_path / "tv")
    assert store.actionless and json.loads((tmp_path / "tv" / "index.json").read_text())["format"] == ACTIONLESS_FORMAT
    with pytest.raises(DataFormatError, match="holds no actions"):
        store.load(store.entries[0])
    items = load_task_video_items(tmp_path / "tv")
    assert len(items) == 3 and all(i.source == "robot" and i.meta["actionless"] for i in items)
    both = load_items(robot, None, tmp_path / "tv")
    assert len(both) == 4 + 3 and sum(bool(i.meta.get("actionless")) for i in both) == 3
    with pytest.raises(DataFormatError, match="expected actionless task video"):
        load_task_video_items(robot)  # a store with actions is not task video


def test_the_task_video_joins_the_robot_tokens_for_pretraining_only(tmp_path):
    from vpdd.tokenizer.cache import TokenCache
    from vpdd.tokenizer.encode import encode_dataset
    from vpdd.train.datasets import FinetuneData, PretrainData

    syn = _synthetic()
    base = syn.artefacts(tmp_path / "base")
    rng = np.random.default_rng(5)
    entries = []
    for task in syn.TASKS:
        rel = f"{task}/video_0000.npz"
        save_frames_only(tmp_path / "tv" / rel, syn.moving_square_video(rng, 30), {"task": task})
        entries.append({"task": task, "seed": 77, "path": rel, "length": 30, "instruction": f"do {task}"})
    write_index(tmp_path / "tv", entries, actionless=True)
    cfg = syn.config()
    encode_dataset(base["tokenizer"], tmp_path / "tokens", robot=base["robot"], corpus=base["corpus"],
                   task_video=tmp_path / "tv", params=cfg.tokenizer, data_dvc=None, progress=False)
    cache = TokenCache(tmp_path / "tokens")
    robot = cache["robot"]
    flagged = [rec for rec in robot.items if rec.get("actionless")]
    assert len(flagged) == len(syn.TASKS) and len(robot.items) == len(flagged) + 3 * len(syn.TASKS)
    assert json.loads((tmp_path / "tokens" / "manifest.json").read_text())["inputs"]["task_video"]["episodes"] == 2
    pre = PretrainData(cache, cfg.pretrain, n_action_tokens=4)
    assert set(pre.sources["robot"].item_of) >= {robot.items.index(rec) for rec in flagged}
    fine = FinetuneData(cache, base["robot"], list(syn.TASKS), 3, 20, cfg.model.actions.n_bins, cfg.model.actions.chunk)
    assert not any(robot.items[int(e)].get("actionless") for e in fine.items)


@pytest.mark.sim
def test_rendered_task_video_has_no_actions_and_avoids_reserved_scenes(tmp_path):
    task = "drawer-close-v3"
    reserved_seed = episode_seed(4321, task, 0)
    spec = CollectSpec(tasks=[task], demos_per_task=2, max_steps=120, steps_after_success=3, resolution=32,
                       crop=0.5417, seed=4321, actionless=True, exclude_seeds={task: [reserved_seed]})
    report = collect_metaworld(spec, tmp_path / "tv", workers=1, progress=False)
    assert report["episodes"] == 2 and report["skipped_reserved_seeds"] == 1
    store = EpisodeStore(tmp_path / "tv")
    assert store.actionless
    seeds = []
    for entry in store.entries:
        with zipfile.ZipFile(tmp_path / "tv" / entry["path"]) as z:
            assert sorted(z.namelist()) == ["frames.npy", "meta.json"]  # no actions, states or success flags
        frames, meta = store.load_frames(entry)
        assert frames.shape[1:] == (32, 32, 3) and frames.std() > 10 and meta["actionless"] and meta["success"]
        seeds.append(entry["seed"])
    assert reserved_seed not in seeds and seeds == [episode_seed(4321, task, a) for a in (1, 2)]


@pytest.mark.sim
def test_the_render_command_writes_the_configured_set_and_its_report(tmp_path):
    raw = _synthetic().params()  # 16x16 frames
    raw["data"]["robot"]["tasks"] = ["drawer-close-v3"]
    raw["data"]["robot"]["max_steps"] = 120
    raw["data"]["task_video"].update(episodes_per_task=2, seed=31)
    raw["data"]["workers"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    out = subprocess.run([VPDD, "data", "render-task-video", "--params",
                          str(tmp_path / "params.yaml"), "--out", str(tmp_path / "tv"), "--report",
                          str(tmp_path / "report.json")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["episodes"] == 2 and "seconds" not in report
    cfg = config_from_dict(raw, source="test")
    reserved = reserved_for_task_video(cfg, ["drawer-close-v3"])["drawer-close-v3"]
    store = EpisodeStore(tmp_path / "tv")
    assert store.actionless and not {e["seed"] for e in store.entries} & reserved


def test_zero_episodes_give_an_empty_actionless_store(tmp_path):
    raw = _synthetic().params()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    out = subprocess.run([VPDD, "data", "render-task-video", "--params",
                          str(tmp_path / "params.yaml"), "--out", str(tmp_path / "tv")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    store = EpisodeStore(tmp_path / "tv", allow_empty=True)
    assert store.actionless and store.entries == []
    with pytest.raises(DataFormatError, match="lists no episodes"):
        EpisodeStore(tmp_path / "tv")
