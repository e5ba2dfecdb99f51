"""Closed-loop Meta-World evaluation of a VPDD policy: success rates with confidence intervals.

Protocol (docs/evaluation.md):

* **Scenes.** For evaluation seed ``s`` and task ``task``, episode ``k`` starts from the scene that
  ``episode_seed(EVAL_SEED_BASE + s, task, k)`` determines (object and goal positions really seeded, see
  :class:`vpdd.envs.MetaWorldEnv`). The base is far from the training data's seeds, so evaluation scenes
  are not the demonstrations' scenes. The policy's sampling generator is reset to ``s`` for every batch.
* **Success** is Meta-World's ``info["success"]`` flag at any step within ``max_steps`` (the paper's
  200): the episode ends at its first success; an episode that never succeeds counts as a failure.
* **Batching.** ``n_envs`` environments of one task run side by side; every control step renders all of
  them and the policy predicts for the whole batch in one reverse diffusion (``policy.select_action`` with a
  batch of frames). Finished environments stop stepping; the batch ends when all have finished.
* **Statistics.** Per task and overall: the success rate with a 95% Wilson score interval over episodes;
  per evaluation seed, the mean over tasks (and their standard deviation across seeds).

The frames the policy sees are rendered with the checkpoint's own camera settings (``config["env"]``),
so a policy is always evaluated on the images it was trained on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vpdd.eval.scenes import EVAL_SEED_BASE, scene_seeds  # noqa: F401  (re-exported)


class EvaluationError(ValueError):
    """Bad evaluation input (names the value and what was expected)."""


@dataclass
class EpisodeResult:
    task: str
    eval_seed: int
    episode: int
    scene_seed: int
    success: bool
    steps: int  # steps taken (the first success step + 1, or max_steps)
    policy_calls: int


@dataclass
class RolloutVideo:
    task: str
    eval_seed: int
    episode: int
    success: bool
    frames: np.ndarray  # (T, H, W, 3) uint8


@dataclass
class TaskTiming:
    env_s: float = 0.0
    policy_s: float = 0.0
    steps: int = 0
    policy_calls: int = 0


@dataclass
class EvalRun:
    episodes: list[EpisodeResult] = field(default_factory=list)
    videos: list[RolloutVideo] = field(default_factory=list)
    timing: TaskTiming = field(default_factory=TaskTiming)


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson score interval of a binomial proportion (sensible at 0/n and n/n, unlike Wald)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # the exact bounds are 0 at 0/n and 1 at n/n; rounding can leave them a hair inside the rate itself
    return (min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)))


def make_envs(task: str, env_cfg: dict[str, Any], n: int, max_steps: int) -> list[Any]:
    from vpdd.envs.metaworld import MetaWorldEnv

    return [
        MetaWorldEnv(task, camera=env_cfg["camera"], resolution=int(env_cfg["resolution"]), flip=bool(env_cfg["flip"]),
                     fast_render=bool(env_cfg.get("fast_render", True)),
                     render_backend=env_cfg.get("render_backend", "egl"),
                     max_episode_steps=max_steps + 1, crop=float(env_cfg.get("crop", 1.0)))
        for _ in range(n)
    ]


def run_batch(policy: Any, envs: Sequence[Any], seeds: Sequence[int], instruction: str, max_steps: int,
              policy_seed: int, record: int, timing: TaskTiming
              ) -> tuple[list[tuple[bool, int, int]], list[np.ndarray]]:
    """Roll out ``len(seeds)`` episodes side by side; returns ((success, steps, policy_calls) per episode,
    the frames of the first ``record`` episodes)."""
    n = len(seeds)
    envs = envs[:n]
    policy.reset(seed=policy_seed)
    for env, seed in zip(envs, seeds, strict=True):
        env.reset(seed)
    done = np.zeros(n, dtype=bool)
    success = np.zeros(n, dtype=bool)
    steps = np.full(n, max_steps, dtype=np.int64)
    calls = np.zeros(n, dtype=np.int64)
    frames_kept: list[list[np.ndarray]] = [[] for _ in range(min(record, n))]
    last = [None] * n
    for t in range(max_steps):
        tic = time.perf_counter()
        frames = []
        for i, env in enumerate(envs):
            # a finished environment keeps its last frame: the batch shape stays fixed for the policy
            last[i] = env.render() if not done[i] else last[i]
            frames.append(last[i])
        batch = np.stack(frames)
        timing.env_s += time.perf_counter() - tic
        for i in range(len(frames_kept)):
            if not done[i]:
                frames_kept[i].append(batch[i])
        tic = time.perf_counter()
        queued = policy.queued_actions
        actions = policy.select_action(batch, instruction)
        if queued == 0:
            calls[~done] += 1
            timing.policy_calls += 1
        timing.policy_s += time.perf_counter() - tic
        tic = time.perf_counter()
        for i, env in enumerate(envs):
            if done[i]:
                continue
            result = env.step(actions[i])
            timing.steps += 1
            if result.success:
                done[i], success[i], steps[i] = True, True, t + 1
        timing.env_s += time.perf_counter() - tic
        if done.all():
            break
    return [(bool(success[i]), int(steps[i]), int(calls[i])) for i in range(n)], [np.stack(f) for f in frames_kept]


def run_task(policy: Any, task: str, env_cfg: dict[str, Any], eval_seeds: Sequence[int], episodes: int,
             max_steps: int, n_envs: int, videos: int, on_batch: Callable[[int], None] | None = None) -> EvalRun:
    """All evaluation episodes of one task."""
    from vpdd.envs.tasks import instruction

    run = EvalRun()
    envs = make_envs(task, env_cfg, min(n_envs, episodes), max_steps)
    text = instruction(task)
    try:
        for eval_seed in eval_seeds:
            seeds = scene_seeds(task, eval_seed, episodes)
            for start in range(0, episodes, n_envs):
                chunk = seeds[start:start + n_envs]
                record = max(0, min(videos - start, len(chunk))) if videos else 0
                # the policy's randomness: a function of (evaluation seed, batch), so reruns are identical
                outcomes, clips = run_batch(policy, envs, chunk, text, max_steps,
                                            policy_seed=eval_seed * 100_003 + start, record=record, timing=run.timing)
                for k, (ok, steps, calls) in enumerate(outcomes):
                    run.episodes.append(EpisodeResult(task, int(eval_seed), start + k, int(chunk[k]), ok, steps, calls))
                for k, clip in enumerate(clips):
                    run.videos.append(RolloutVideo(task, int(eval_seed), start + k, outcomes[k][0], clip))
                if on_batch is not None:
                    on_batch(len(chunk))
    finally:
        for env in envs:
            env.close()
    return run


def summarise(episodes: Sequence[EpisodeResult], tasks: Sequence[str], eval_seeds: Sequence[int]) -> dict[str, Any]:
    """Per-task and overall success rates with 95% Wilson intervals; per-seed means over tasks."""
    out: dict[str, Any] = {"tasks": {}}
    for task in tasks:
        mine = [e for e in episodes if e.task == task]
        if not mine:
            raise EvaluationError(f"no episodes were run for task {task!r}")
        wins = sum(e.success for e in mine)
        succ_steps = [e.steps for e in mine if e.success]
        out["tasks"][task] = {
            "success": wins / len(mine), "ci95": list(wilson_interval(wins, len(mine))), "episodes": len(mine),
            "successes": wins, "mean_steps_to_success": float(np.mean(succ_steps)) if succ_steps else None,
        }
    wins = sum(e.success for e in episodes)
    out["mean_success"] = float(np.mean([v["success"] for v in out["tasks"].values()]))
    out["ci95"] = list(wilson_interval(wins, len(episodes)))
    out["episodes"] = len(episodes)
    out["successes"] = wins
    per_seed = {}
    for s in eval_seeds:
        rates = [np.mean([e.success for e in episodes if e.task == t and e.eval_seed == s]) for t in tasks]
        per_seed[str(s)] = float(np.mean(rates))
    out["per_seed_mean_success"] = per_seed
    out["seed_std"] = float(np.std(list(per_seed.values()), ddof=1)) if len(per_seed) > 1 else 0.0
    return out


def episode_records(episodes: Sequence[EpisodeResult]) -> list[dict[str, Any]]:
    return [asdict(e) for e in episodes]
