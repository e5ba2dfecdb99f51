"""Scripted-expert data from Meta-World: robot demonstrations and the default actionless corpus.

``collect_metaworld`` drives each task's scripted expert and records, per step, the upright camera
frame, the 4-d action, the 39-d state and the success flag. Every attempt has its own seed derived from
(base seed, task, attempt number), so the same settings give the same bytes and adding a task does not
change the others. Failed demonstrations are dropped (and counted) unless ``keep_failures``.

With ``actionless`` the same rollouts are written without actions, states or success flags (frames and
metadata only, :func:`vpdd.data.episodes.save_frames_only`): the actionless video of the fine-tuning tasks
(``vpdd data render-task-video``). ``exclude_seeds`` lists, per task, scene seeds that must not be used
(demonstrations, evaluation scenes); an attempt whose seed is listed is skipped and counted.

``render_actionless_corpus`` renders scripted episodes of *other* tasks from *another* camera as mp4
files with optional caption sidecars and no actions: the stand-in for human video that the default
pipeline ships with.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing as mp
import queue
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vpdd.data.episodes import Episode, save_episode, save_frames_only, write_index
from vpdd.envs.tasks import instruction, unknown_tasks
from vpdd.utils.io import atomic_directory, atomic_write_json

log = logging.getLogger(__name__)


class CollectionError(ValueError):
    """The scripted experts could not produce the requested demonstrations."""


@dataclass
class CollectSpec:
    tasks: list[str]
    demos_per_task: int
    max_steps: int = 150
    steps_after_success: int = 10  # -1: keep going until max_steps
    max_attempts_per_demo: int = 3
    seed: int = 0
    camera: str = "corner2"
    resolution: int = 96
    flip: bool = True
    crop: float = 1.0
    fast_render: bool = True
    render_backend: str = "egl"
    keep_failures: bool = False
    actionless: bool = False  # write frames and metadata only
    exclude_seeds: dict[str, list[int]] | None = None  # per task, scene seeds never to use

    def __post_init__(self) -> None:
        bad = unknown_tasks(self.tasks)
        if bad:
            raise ValueError(f"unknown Meta-World tasks {bad}: expected v3 names such as 'drawer-close-v3'")
        if not self.tasks or self.demos_per_task < 1:
            raise ValueError(f"tasks={self.tasks}, demos_per_task={self.demos_per_task}: expected >= 1 of each")


def episode_seed(base_seed: int, task: str, attempt: int) -> int:
    """A stable 31-bit seed for one attempt, independent of the other tasks in the run."""
    digest = hashlib.sha256(f"{base_seed}:{task}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def rollout(env: Any, policy: Any, seed: int, max_steps: int, steps_after_success: int) -> Episode:
    """Run the scripted expert from the scene ``seed`` determines; frames are observed before each action."""
    state = env.reset(seed)
    frames, actions, states, success = [], [], [], []
    first_success = None
    for t in range(max_steps):
        frames.append(env.render())
        action = np.clip(policy.get_action(state), -1.0, 1.0).astype(np.float32)
        states.append(state.astype(np.float32))
        result = env.step(action)
        actions.append(action)
        success.append(result.success)
        state = result.state
        if result.success and first_success is None:
            first_success = t
        if first_success is not None and 0 <= steps_after_success <= t - first_success:
            break
    meta = {
        "task": env.task, "instruction": env.instruction, "seed": int(seed), "success": first_success is not None,
        "first_success_step": first_success, "length": len(frames), "camera": env.camera,
        "resolution": env.resolution, "flipped": env.flip, "crop": env.crop, "benchmark": "metaworld",
    }
    return Episode(np.stack(frames), np.stack(actions), np.stack(states), np.array(success), meta)


def _collect_task(spec: CollectSpec, task: str, out: Path, progress: Any) -> dict[str, Any]:
    from vpdd.envs.metaworld import MetaWorldEnv, scripted_policy

    entries, failures, attempt, reserved = [], 0, 0, 0
    max_attempts = spec.demos_per_task * spec.max_attempts_per_demo
    exclude = set((spec.exclude_seeds or {}).get(task, ()))
    with MetaWorldEnv(task, spec.camera, spec.resolution, spec.flip, spec.fast_render, spec.render_backend,
                      max_episode_steps=spec.max_steps + 1, crop=spec.crop) as env:
        policy = scripted_policy(task)
        while len(entries) < spec.demos_per_task and attempt < max_attempts:
            seed = episode_seed(spec.seed, task, attempt)
            attempt += 1
            if seed in exclude:
                reserved += 1
                log.info("%s: scene seed %d is reserved (demonstrations or evaluation); skipped", task, seed)
                continue
            episode = rollout(env, policy, seed, spec.max_steps, spec.steps_after_success)
            episode.meta["attempt"] = attempt - 1
            if not episode.meta["success"]:
                failures += 1
                if not spec.keep_failures:
                    continue
            if spec.actionless:
                rel = f"{task}/video_{attempt - 1:04d}.npz"
                save_frames_only(out / rel, episode.frames, {**episode.meta, "actionless": True})
            else:
                rel = f"{task}/episode_{attempt - 1:04d}.npz"
                save_episode(out / rel, episode)
            entries.append({"path": rel, **{k: episode.meta[k] for k in
                            ("task", "instruction", "seed", "success", "length", "attempt")}})
            if progress is not None:
                progress.put(len(episode))
    return {"task": task, "entries": entries, "attempts": attempt, "failures": failures, "reserved": reserved}


def _worker(args: tuple[CollectSpec, str, str, Any]) -> dict[str, Any]:
    spec, task, out, progress = args
    return _collect_task(spec, task, Path(out), progress)


def collect_metaworld(spec: CollectSpec, out: str | Path, workers: int = 1, progress: bool = True,
                      force: bool = False) -> dict[str, Any]:
    """Collect ``spec.demos_per_task`` demonstrations of each task into ``out`` (written atomically)."""
    from tqdm import tqdm

    out = Path(out)
    start = time.perf_counter()
    with atomic_directory(out, marker="index.json", force=force) as tmp:
        bar = tqdm(total=spec.demos_per_task * len(spec.tasks), desc="collect", unit="demo", disable=not progress)
        frames = 0
        if workers <= 1:
            results = []
            for task in spec.tasks:
                results.append(_collect_task(spec, task, tmp, None))
                bar.update(len(results[-1]["entries"]))
                frames += sum(e["length"] for e in results[-1]["entries"])
        else:
            ctx = mp.get_context("spawn")  # a fresh process per worker: no GL context is shared across fork
            with ctx.Manager() as manager, ctx.Pool(min(workers, len(spec.tasks))) as pool:
                updates = manager.Queue()
                pending = pool.map_async(_worker, [(spec, t, str(tmp), updates) for t in spec.tasks])
                while not pending.ready() or not updates.empty():
                    try:
                        frames += updates.get(timeout=0.2)
                        bar.update(1)
                    except queue.Empty:
                        pass
                results = pending.get()
        bar.close()
        entries = [e for r in results for e in r["entries"]]
        short = {r["task"]: len(r["entries"]) for r in results if len(r["entries"]) < spec.demos_per_task}
        if short:
            raise CollectionError(
                f"collect-metaworld: too few successful demonstrations {short} (wanted {spec.demos_per_task} "
                f"per task within {spec.demos_per_task * spec.max_attempts_per_demo} attempts); "
                "raise data.robot.max_attempts_per_demo"
            )
        write_index(tmp, entries, actionless=spec.actionless)
        report = {
            "spec": asdict(spec),
            "episodes": len(entries),
            "attempts": sum(r["attempts"] for r in results),
            "dropped_failures": 0 if spec.keep_failures else sum(r["failures"] for r in results),
            "failures": sum(r["failures"] for r in results),
            "per_task": {r["task"]: {"kept": len(r["entries"]), "attempts": r["attempts"], "failures": r["failures"]}
                         for r in results},
            "frames": sum(e["length"] for e in entries),
        }
        if spec.actionless or spec.exclude_seeds:  # keys only when they apply: the pinned demos' report is unchanged
            report["spec"]["exclude_seeds"] = {t: len(v) for t, v in (spec.exclude_seeds or {}).items()}  # counts
            report["skipped_reserved_seeds"] = sum(r["reserved"] for r in results)
            for r in results:
                report["per_task"][r["task"]]["skipped_reserved_seeds"] = r["reserved"]
        else:
            for key in ("actionless", "exclude_seeds"):
                report["spec"].pop(key)
        atomic_write_json(tmp / "collection.json", report)
    elapsed = time.perf_counter() - start
    log.info("collected %d episodes, %d frames in %.1f s (%d failed attempts dropped)",
             report["episodes"], report["frames"], elapsed, report["dropped_failures"])
    return {**report, "seconds": elapsed}


_RENDERED = re.compile(r"[a-z0-9-]+-v3_\d{3}\.(mp4|txt)")


def _rendered_corpus(folder: Path) -> bool:
    """a file render_actionless_corpus does not write (it writes only <task>_<NNN>.mp4 and .txt files)"""
    return all(_RENDERED.fullmatch(p.name) for p in folder.iterdir())


def render_actionless_corpus(
    tasks: list[str], videos_per_task: int, out: str | Path, camera: str = "corner3", resolution: int = 96,
    fps: int = 20, captioned_fraction: float = 0.5, seed: int = 1000, max_steps: int = 150,
    render_backend: str = "egl", progress: bool = True, force: bool = False,
) -> dict[str, Any]:
    """Render scripted episodes of ``tasks`` as mp4 videos (no actions), with caption sidecars for some."""
    from tqdm import tqdm

    from vpdd.data.video import write_video
    from vpdd.envs.metaworld import MetaWorldEnv, scripted_policy

    bad = unknown_tasks(tasks)
    if bad:
        raise ValueError(f"unknown Meta-World tasks {bad}")
    n_captioned = round(captioned_fraction * videos_per_task)
    written = []
    with atomic_directory(out, marker=_rendered_corpus, force=force) as tmp:
        for task in tqdm(tasks, desc="corpus", unit="task", disable=not progress):
            with MetaWorldEnv(task, camera, resolution, True, True, render_backend, max_steps + 1) as env:
                policy = scripted_policy(task)
                for k in range(videos_per_task):
                    episode = rollout(env, policy, episode_seed(seed, task, k), max_steps, 5)
                    name = f"{task}_{k:03d}"
                    write_video(tmp / f"{name}.mp4", episode.frames, fps=fps)
                    if k < n_captioned:
                        (tmp / f"{name}.txt").write_text(instruction(task) + "\n")
                    written.append(name)
    return {"videos": len(written), "captioned": n_captioned * len(tasks)}
