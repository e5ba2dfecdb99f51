"""Config group ``env``: the robot benchmark, its camera and rendering."""

from __future__ import annotations

from dataclasses import dataclass

from vpdd.config.base import Check, Validated, one_of, positive
from vpdd.envs.tasks import CAMERAS


@dataclass
class EnvConfig(Validated):
    benchmark: str = "metaworld"
    camera: str = "corner2"
    flip: bool = True  # the corner cameras render upside down; rotate frames by 180 degrees
    resolution: int = 64  # rendered frames are resolution x resolution (96 in the paper)
    crop: float = 0.5417  # centre crop of the camera view: VPDD keeps [110:370] of a 480 render (260/480)
    render_backend: str = "egl"  # MUJOCO_GL: egl | osmesa
    fast_render: bool = True  # no shadows, no reflections, no MSAA: about 10x faster on CPU
    max_episode_steps: int = 200

    def checks(self) -> list[Check]:
        return [
            one_of(self, "benchmark", ("metaworld", "rlbench")),
            one_of(self, "camera", CAMERAS),
            one_of(self, "render_backend", ("egl", "osmesa")),
            *positive(self, "resolution", "max_episode_steps"),
            Check("crop", 0.0 < self.crop <= 1.0, "a fraction in (0, 1]"),
        ]
