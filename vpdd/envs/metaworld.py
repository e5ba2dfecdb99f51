"""Meta-World v3 tasks with seeded resets and fast offscreen rendering.

Two Meta-World gotchas are handled here so no caller meets them:

* ``reset(seed=...)`` ignores its seed. Object and goal positions come from ``_get_state_rand_vec``,
  which only uses the env's seeded generator when ``seeded_rand_vec`` is set and the vector is not
  frozen; :meth:`MetaWorldEnv.reset` seeds that generator, so a seed fixes the scene.
* The corner cameras render upside down; frames are rotated by 180 degrees (``flip``).

``crop`` reproduces VPDD's framing: its frames are the centre 260x260 of a 480x480 render. Rendering with
a narrower field of view (tan(fovy/2) scaled by the crop fraction) gives the same picture directly at the
target resolution, with no oversized render and no resampling.

Rendering uses MuJoCo's EGL (or OSMesa) backend, chosen through ``MUJOCO_GL`` before MuJoCo is imported.
The fast setting turns off shadows, reflections and multisampling: about 10x faster on a CPU renderer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from vpdd.envs.tasks import CAMERAS, instruction


def set_render_backend(backend: str = "egl") -> None:
    """Select MuJoCo's offscreen GL backend; must run before ``mujoco`` is imported to take effect."""
    if backend not in ("egl", "osmesa"):
        raise ValueError(f"render backend {backend!r}: expected 'egl' or 'osmesa'")
    os.environ.setdefault("MUJOCO_GL", backend)
    if os.environ["MUJOCO_GL"] == "osmesa":
        os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")


@dataclass
class StepResult:
    state: np.ndarray  # (39,) float64
    reward: float
    success: bool
    info: dict[str, Any]


class MetaWorldEnv:
    """One Meta-World task: ``reset(seed)``, ``step(action)``, ``render()`` -> upright uint8 frame."""

    def __init__(
        self,
        task: str,
        camera: str = "corner2",
        resolution: int = 96,
        flip: bool = True,
        fast_render: bool = True,
        render_backend: str = "egl",
        max_episode_steps: int = 500,
        crop: float = 1.0,
    ):
        self.task = task
        self.instruction = instruction(task)  # raises a clear error for an unknown task
        if camera not in CAMERAS:
            raise ValueError(f"camera {camera!r}: expected one of {list(CAMERAS)}")
        set_render_backend(render_backend)
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        self.camera, self.resolution, self.flip, self.fast_render = camera, resolution, flip, fast_render
        env = ALL_V3_ENVIRONMENTS[task](
            render_mode="rgb_array", camera_name=camera, width=resolution, height=resolution
        )
        env._partially_observable = False  # goal-observable, as in MT50
        env._set_task_called = True
        env.seeded_rand_vec = True
        env._freeze_rand_vec = False
        env.max_path_length = max_episode_steps
        if not 0.0 < crop <= 1.0:
            raise ValueError(f"crop={crop}: expected a fraction in (0, 1]")
        if crop < 1.0:
            import math

            import mujoco

            cam = mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
            half = math.radians(env.model.cam_fovy[cam]) / 2
            env.model.cam_fovy[cam] = math.degrees(2 * math.atan(crop * math.tan(half)))
        self.crop = crop
        self._env = env
        self._fast_applied = False
        self.state: np.ndarray | None = None

    @property
    def raw(self) -> Any:
        """The underlying Meta-World environment."""
        return self._env

    def reset(self, seed: int) -> np.ndarray:
        """Reset to the scene that ``seed`` determines; returns the 39-d state."""
        self._env.seed(int(seed))
        state, _ = self._env.reset()
        self.state = state
        return state

    def step(self, action: np.ndarray) -> StepResult:
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        state, reward, _terminated, _truncated, info = self._env.step(action)
        self.state = state
        return StepResult(state=state, reward=float(reward), success=bool(info.get("success", 0.0)), info=info)

    def render(self) -> np.ndarray:
        """The current camera image, (resolution, resolution, 3) uint8, upright when ``flip``."""
        if self.fast_render and not self._fast_applied:
            import mujoco

            self._env.model.vis.quality.offsamples = 0
            self._env.render()  # creates the offscreen viewer
            viewer = self._env.mujoco_renderer._get_viewer("rgb_array")
            viewer.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            viewer.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            self._fast_applied = True
        frame = self._env.render()
        if self.flip:
            frame = frame[::-1, ::-1]
        return np.ascontiguousarray(frame, dtype=np.uint8)

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> MetaWorldEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def scripted_policy(task: str) -> Any:
    """Meta-World's scripted expert for ``task`` (``get_action(state) -> action``)."""
    instruction(task)
    from metaworld.policies import ENV_POLICY_MAP

    return ENV_POLICY_MAP[task]()
