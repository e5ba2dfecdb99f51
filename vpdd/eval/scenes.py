"""Which Meta-World scenes each part of the project uses, so training data and evaluation never share one.

A scene is the seed ``env.reset(seed)`` receives (object and goal positions). The seed rules:

* demonstrations: ``episode_seed(data.robot.seed, task, attempt)`` (:func:`vpdd.data.collect.episode_seed`);
* actionless task video: ``episode_seed(data.task_video.seed, task, attempt)``, minus every reserved seed;
* closed-loop evaluation: :func:`scene_seeds`, ``episode_seed(EVAL_SEED_BASE + s, task, k)``;
* held-out clips of ``vpdd eval video``: :func:`heldout_seed`, a hash in its own namespace.

:func:`training_seeds` lists what the training data may hold (the video evaluation skips those);
:func:`evaluation_scene_seeds` lists what the evaluations use (the task-video renderer skips those), so the
two sides stay apart whatever flags either is run with. Only hashing here: no model or simulator imports.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EVAL_SEED_BASE = 1_000_003  # evaluation scenes: far from data.robot.seed / data.corpus.seed bases
SEED_NAMESPACE = "vpdd-eval-video"
HELDOUT_DEFAULT_SEED = 0  # `vpdd eval video --seed` default
# held-out attempts of `vpdd eval video` reserved per task (its default uses 2 episodes x 3 attempts)
HELDOUT_ATTEMPTS_RESERVED = 256


def scene_seeds(task: str, eval_seed: int, episodes: int) -> list[int]:
    """The scene seeds of ``episodes`` evaluation episodes of ``task`` for evaluation seed ``eval_seed``."""
    from vpdd.data.collect import episode_seed

    return [episode_seed(EVAL_SEED_BASE + int(eval_seed), task, k) for k in range(episodes)]


def hash31(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def heldout_seed(seed: int, task: str, attempt: int) -> int:
    """The scene seed of held-out attempt ``attempt`` of ``task`` in ``vpdd eval video``."""
    return hash31(f"{SEED_NAMESPACE}:{int(seed)}:{task}:{int(attempt)}")


def training_seeds(robot_cfg: Any, tasks: Sequence[str], robot: str | Path | None = None,
                   task_video_cfg: Any = None) -> dict[str, set[int]]:
    """Per task, every scene seed the training data may hold: all attempts the collector could derive from
    ``data.robot.seed`` (and, given ``task_video_cfg`` = ``data.task_video``, from the actionless task video's
    seed), plus the seeds recorded in ``robot``'s ``index.json`` when given."""
    from vpdd.data.collect import episode_seed

    attempts = int(robot_cfg.demos_per_task) * int(robot_cfg.max_attempts_per_demo)
    seeds = {t: {episode_seed(int(robot_cfg.seed), t, a) for a in range(attempts)} for t in tasks}
    if task_video_cfg is not None:
        n = int(task_video_cfg.episodes_per_task) * int(task_video_cfg.max_attempts_per_episode)
        for t in tasks:
            seeds[t] |= {episode_seed(int(task_video_cfg.seed), t, a) for a in range(n)}
    if robot is not None:
        from vpdd.data.episodes import EpisodeStore

        for entry in EpisodeStore(robot).entries:
            if entry.get("task") in seeds and entry.get("seed") is not None:
                seeds[entry["task"]].add(int(entry["seed"]))
    return seeds


def evaluation_scene_seeds(cfg: Any, tasks: Sequence[str]) -> dict[str, set[int]]:
    """Per task, the closed-loop evaluation scenes of ``cfg.eval`` and the first
    :data:`HELDOUT_ATTEMPTS_RESERVED` held-out scenes of ``vpdd eval video`` (its default seed)."""
    out: dict[str, set[int]] = {}
    for task in tasks:
        seeds = {s for e in cfg.eval.seeds for s in scene_seeds(task, e, cfg.eval.episodes_per_task)}
        seeds |= {heldout_seed(HELDOUT_DEFAULT_SEED, task, a) for a in range(HELDOUT_ATTEMPTS_RESERVED)}
        out[task] = seeds
    return out


def reserved_for_task_video(cfg: Any, tasks: Sequence[str]) -> dict[str, set[int]]:
    """The seeds the actionless task video must not use: every evaluation scene and every seed the
    demonstrations may use."""
    out = evaluation_scene_seeds(cfg, tasks)
    for task, seeds in training_seeds(cfg.data.robot, tasks).items():
        out[task] |= seeds
    return out
