"""RLBench tasks behind the interface of :mod:`vpdd.envs.metaworld`, and the closed-loop keyframe evaluation.

RLBench runs on CoppeliaSim 4.1 through PyRep; none of the three installs from PyPI (docs/rlbench.md,
``shared/spec/environment.md`` §9). This module imports RLBench only inside :class:`RLBenchEnv`, and the
constructor first checks :func:`rlbench_status`: when RLBench, PyRep or CoppeliaSim is missing it raises
:class:`RLBenchUnavailable` at once, with what is missing and the install steps (:data:`INSTALL_HELP`),
before anything is launched. Everything else of the RLBench path (reading PerAct data, tokens, training,
predicting keyframes) runs without it.

Interface (as ``MetaWorldEnv``): ``reset(seed) -> observation``, ``step(action) -> RLBenchStep``,
``render() -> observation``, ``instruction``, ``close()``; an observation is ``{camera: uint8 (S, S, 3)}``.
Actions are keyframe end-effector poses ``[x, y, z, qx, qy, qz, qw, gripper_open]`` executed with RLBench's
``MoveArmThenGripper(EndEffectorPoseViaPlanning(), Discrete())`` (a motion planner moves the arm to the
pose, then the gripper opens or closes). A pose the planner cannot reach ends the episode as a failure.

:func:`evaluate_keyframes` is PerAct's evaluation loop: per episode, reset with a seed, then up to
``max_steps`` (25) times predict a keyframe from the current views and execute it; success is RLBench's
reward of 1. It takes any environment factory with this interface.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

INSTALL_HELP = """\
To run RLBench (closed-loop evaluation), install CoppeliaSim 4.1, PyRep and RLBench (none is on PyPI):
  1. download CoppeliaSim 4.1.0 for your Ubuntu (e.g. CoppeliaSim_Edu_V4_1_0_Ubuntu20_04.tar.xz from
     coppeliarobotics.com/previousVersions) and unpack it;
  2. export COPPELIASIM_ROOT=/path/to/CoppeliaSim_Edu_V4_1_0_Ubuntu20_04
     export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$COPPELIASIM_ROOT
     export QT_QPA_PLATFORM_PLUGIN_PATH=$COPPELIASIM_ROOT
  3. pip install git+https://github.com/stepjam/PyRep.git   (the PyPI package called `pyrep` is unrelated)
  4. pip install git+https://github.com/stepjam/RLBench.git (PerAct's data came from its fork
     MohitShridhar/RLBench, branch peract)
  5. on a machine without a display, run an X server (e.g. `Xvfb :99 &` and `export DISPLAY=:99`).
Check with `vpdd info`."""


class RLBenchUnavailable(RuntimeError):
    """RLBench, PyRep or CoppeliaSim is missing; the message says what and how to install them."""


def rlbench_status() -> dict[str, Any]:
    """``{"available": bool, "problems": [...]}``: what stands between this machine and running RLBench."""
    problems = []
    if importlib.util.find_spec("rlbench") is None:
        problems.append("the rlbench package is not importable")
    if importlib.util.find_spec("pyrep") is None:
        problems.append("PyRep is not importable")
    elif importlib.util.find_spec("pyrep.backend") is None:
        problems.append("the installed `pyrep` is not stepjam/PyRep (the PyPI package of that name is unrelated)")
    root = os.environ.get("COPPELIASIM_ROOT")
    if not root:
        problems.append("COPPELIASIM_ROOT is not set")
    elif not Path(root).is_dir():
        problems.append(f"COPPELIASIM_ROOT={root} is not a folder")
    else:
        if root not in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep):
            problems.append("LD_LIBRARY_PATH does not contain $COPPELIASIM_ROOT")
        if not os.environ.get("QT_QPA_PLATFORM_PLUGIN_PATH"):
            problems.append("QT_QPA_PLATFORM_PLUGIN_PATH is not set")
    return {"available": not problems, "problems": problems}


def require_rlbench() -> None:
    """Raise :class:`RLBenchUnavailable` (what is missing + :data:`INSTALL_HELP`) unless RLBench can run."""
    status = rlbench_status()
    if not status["available"]:
        raise RLBenchUnavailable("RLBench cannot run here: " + "; ".join(status["problems"]) + ".\n" + INSTALL_HELP)


@dataclass
class RLBenchStep:
    observation: dict[str, np.ndarray]  # camera -> uint8 (S, S, 3)
    reward: float
    success: bool
    terminate: bool
    info: dict[str, Any] = field(default_factory=dict)


class RLBenchEnv:
    """One RLBench task with keyframe end-effector pose actions (see the module docstring)."""

    def __init__(self, task: str, cameras: list[str] | tuple[str, ...] = ("front", "left_shoulder",
                 "right_shoulder", "wrist"), image_size: int = 128, headless: bool = True):
        require_rlbench()  # before any import: a clear error, at once
        from rlbench.action_modes.action_mode import MoveArmThenGripper
        from rlbench.action_modes.arm_action_modes import EndEffectorPoseViaPlanning
        from rlbench.action_modes.gripper_action_modes import Discrete
        from rlbench.backend.utils import task_file_to_task_class
        from rlbench.environment import Environment
        from rlbench.observation_config import ObservationConfig

        self.task, self.cameras, self.image_size = task, list(cameras), int(image_size)
        obs_config = ObservationConfig()
        obs_config.set_all(False)
        for cam in self.cameras:
            cam_cfg = getattr(obs_config, f"{cam}_camera")
            cam_cfg.rgb = True
            cam_cfg.image_size = (self.image_size, self.image_size)
        for name in ("gripper_open", "gripper_pose", "joint_velocities", "gripper_joint_positions"):
            setattr(obs_config, name, True)
        action_mode = MoveArmThenGripper(arm_action_mode=EndEffectorPoseViaPlanning(), gripper_action_mode=Discrete())
        self._env = Environment(action_mode, obs_config=obs_config, headless=headless)
        self._env.launch()
        self._task = self._env.get_task(task_file_to_task_class(task))
        self._obs: Any = None
        self.instruction = ""
        self.variation: int | None = None

    def reset(self, seed: int) -> dict[str, np.ndarray]:
        """A new episode whose variation and scene are fixed by ``seed`` (RLBench draws from numpy's global RNG)."""
        np.random.seed(int(seed))
        self.variation = int(self._task.sample_variation())
        descriptions, self._obs = self._task.reset()
        self.instruction = str(descriptions[0])
        return self.render()

    def step(self, action: np.ndarray) -> RLBenchStep:
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (8,):
            raise ValueError(f"RLBench action: expected [x, y, z, qx, qy, qz, qw, gripper_open], got {action.shape}")
        action = action.copy()
        action[3:7] /= max(np.linalg.norm(action[3:7]), 1e-12)
        try:
            self._obs, reward, terminate = self._task.step(action)
        except Exception as err:  # the planner found no path (rlbench / pyrep errors): the episode fails
            if not type(err).__module__.startswith(("rlbench", "pyrep")):
                raise
            return RLBenchStep(self.render(), 0.0, False, True, {"error": f"{type(err).__name__}: {err}"})
        return RLBenchStep(self.render(), float(reward), float(reward) >= 1.0, bool(terminate))

    def render(self) -> dict[str, np.ndarray]:
        """The current image of every camera, uint8 (S, S, 3)."""
        out = {}
        for cam in self.cameras:
            img = np.asarray(getattr(self._obs, f"{cam}_rgb"))
            out[cam] = img if img.dtype == np.uint8 else np.clip(img * 255.0, 0, 255).astype(np.uint8)
        return out

    def close(self) -> None:
        self._env.shutdown()

    def __enter__(self) -> RLBenchEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def evaluate_keyframes(policy, make_env: Callable[[str], Any], tasks: list[str], episodes: int, seed: int = 0,
                       max_steps: int = 25) -> dict[str, Any]:
    """Closed-loop success rate of a keyframe policy (``reset(seed)``, ``select_action(views, instruction)``) on
    ``episodes`` seeded episodes of each task; environments come from ``make_env(task)``."""
    per_task: dict[str, Any] = {}
    t0 = time.time()
    for task in tasks:
        env = make_env(task)
        try:
            results = []
            for k in range(episodes):
                views = env.reset(seed + k)
                policy.reset(seed + k)
                success, steps, error = False, 0, None
                for steps in range(1, max_steps + 1):  # noqa: B007 (steps is reported)
                    res = env.step(policy.select_action(views, env.instruction))
                    views = res.observation
                    error = res.info.get("error")
                    if res.success or res.terminate:
                        success = res.success
                        break
                results.append({"seed": seed + k, "success": success, "steps": steps, "error": error,
                                "instruction": env.instruction})
        finally:
            env.close()
        per_task[task] = {"success_rate": float(np.mean([r["success"] for r in results])), "episodes": results}
        log.info("%s: success %.2f over %d episodes", task, per_task[task]["success_rate"], episodes)
    rates = [v["success_rate"] for v in per_task.values()]
    return {"success_rate": float(np.mean(rates)) if rates else 0.0, "tasks": per_task, "max_steps": max_steps,
            "episodes_per_task": episodes, "seed": seed, "seconds": round(time.time() - t0, 2)}
