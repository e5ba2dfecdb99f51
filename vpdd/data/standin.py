"""A cross-domain stand-in for human video, rendered in Meta-World and written like real human video.

What it is. Scripted-expert episodes of *related Meta-World v3 tasks that are not the fine-tuning tasks*
(default: button-press, button-press-wall, drawer-open, handle-press-side, plate-slide-side, plate-slide-back),
rendered with a deliberate embodiment and visual gap from the robot demonstrations:

* embodiment: the Sawyer arm, pedestal and head are invisible (geom alpha 0; ``arm_style: hidden``), or the
  arm links take a skin-like tone and the rest of the robot is invisible (``recoloured``). The gripper
  (the ``hand`` body and its fingers) takes a skin-like tone drawn per video, so what is seen is a
  differently coloured end effector moving the objects;
* viewpoint: a camera other than the demonstrations' ``corner2``, rotated per video over ``cameras``
  (default corner, corner3, topview and the moving, egocentric-like behindGripper), uncropped;
* lighting: the model's light diffuse/specular and the headlight scaled by one factor per video;
* colour: per video, a brightness gain, per-channel white-balance gains and a hue rotation about the grey
  axis applied to every frame.

Every random choice comes from a generator seeded by (base seed, task, video index), and every scene from
``episode_seed(seed, task, attempt)`` with its own base seed, so the same settings give the same files and
adding a task changes no other task's videos. The output folder holds only ``standin_<task>_<NNN>.mp4``
videos and, for ``captioned_fraction`` of them, ``.txt`` caption sidecars ("a hand presses a button"): no
actions, states, rewards or success flags. ``vpdd data ingest-videos`` reads it unchanged, i.e. the
stand-in enters the pipeline by exactly the path real human video takes. The per-video settings (scene
seed, camera, tone, light and colour parameters, success) go to the report, outside the folder.

What it is not. It is not human video: the simulator, the physics, the table, the object meshes and
textures are the demonstrations' own, and the end effector is still the robot's gripper driven by a
scripted expert, only recoloured and without its arm. It narrows the domain gap of real egocentric human
video (Ego4D), it does not reproduce it. Real human video goes in through ``vpdd data ingest-videos``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vpdd.config.data import DEMO_CAMERA
from vpdd.config.data import STANDIN_ARM_STYLES as ARM_STYLES
from vpdd.envs.tasks import CAMERAS, instruction, unknown_tasks
from vpdd.utils.io import atomic_directory

log = logging.getLogger(__name__)

DEFAULT_TASKS = ("button-press-v3", "button-press-wall-v3", "drawer-open-v3", "handle-press-side-v3",
                 "plate-slide-side-v3", "plate-slide-back-v3")
DEFAULT_CAMERAS = ("corner", "corner3", "topview", "behindGripper")
# RGB skin tones, light to dark (rough sRGB values of the Fitzpatrick scale)
SKIN_TONES = ((0.96, 0.80, 0.69), (0.90, 0.70, 0.56), (0.80, 0.59, 0.45), (0.66, 0.46, 0.33),
              (0.49, 0.33, 0.23), (0.35, 0.23, 0.16))
CAPTIONS = {
    "button-press-v3": "a hand presses a button",
    "button-press-wall-v3": "a hand reaches past a wall and presses a button",
    "button-press-topdown-wall-v3": "a hand reaches over a wall and presses a button from above",
    "drawer-open-v3": "a hand pulls a drawer open",
    "handle-press-side-v3": "a hand presses a handle down from the side",
    "handle-pull-v3": "a hand pulls a handle up",
    "handle-pull-side-v3": "a hand pulls a handle up from the side",
    "plate-slide-side-v3": "a hand slides a plate sideways into a cabinet",
    "plate-slide-back-v3": "a hand pulls a plate out of a cabinet",
    "plate-slide-back-side-v3": "a hand pulls a plate sideways out of a cabinet",
    "door-open-v3": "a hand swings a door open",
    "door-close-v3": "a hand swings a door shut",
    "window-open-v3": "a hand slides a window open",
    "window-close-v3": "a hand slides a window shut",
    "faucet-open-v3": "a hand turns a faucet on",
    "faucet-close-v3": "a hand turns a faucet off",
    "coffee-button-v3": "a hand pushes the button of a coffee machine",
    "reach-v3": "a hand reaches towards a point",
    "push-v3": "a hand pushes a puck across the table",
    "pick-place-v3": "a hand picks up a puck and puts it down elsewhere",
}
NAME = re.compile(r"standin_[a-z0-9-]+-v3_\d{3}\.(mp4|txt)")


class StandinError(ValueError):
    """The stand-in video cannot be rendered as configured; the message names the setting."""


def caption(task: str) -> str:
    """A human-video style caption of ``task``: a hand doing it."""
    if task in CAPTIONS:
        return CAPTIONS[task]
    text = instruction(task).rstrip(".")
    return f"a hand at work: {text[0].lower()}{text[1:]}"


@dataclass
class StandinSpec:
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    videos_per_task: int = 8
    seed: int = 3000
    render_resolution: int = 96
    crop: float = 1.0
    fps: int = 20
    captioned_fraction: float = 0.5
    arm_style: str = "hidden"
    cameras: list[str] = field(default_factory=lambda: list(DEFAULT_CAMERAS))
    light_scale: tuple[float, float] = (0.5, 1.5)
    colour_jitter: float = 0.5
    max_steps: int = 150
    steps_after_success: int = 5
    max_attempts_per_video: int = 2
    render_backend: str = "egl"
    fine_tuning_tasks: list[str] = field(default_factory=list)  # refused in ``tasks``
    demo_camera: str = DEMO_CAMERA  # refused in ``cameras``

    def __post_init__(self) -> None:
        self.light_scale = tuple(float(v) for v in self.light_scale)
        problems = []
        if unknown_tasks(self.tasks):
            problems.append(f"tasks: unknown Meta-World v3 tasks {unknown_tasks(self.tasks)}")
        if overlap := sorted(set(self.tasks) & set(self.fine_tuning_tasks)):
            problems.append(f"tasks: {overlap} are fine-tuning tasks; the stand-in must be other tasks")
        if bad := [c for c in self.cameras if c not in CAMERAS or c in (DEMO_CAMERA, self.demo_camera)]:
            problems.append(f"cameras: {bad} refused; expected cameras of {list(CAMERAS)} other than the "
                            f"demonstrations' {self.demo_camera!r}")
        if self.videos_per_task > 0 and not (self.tasks and self.cameras):
            problems.append("tasks and cameras: non-empty lists when videos_per_task > 0")
        if self.arm_style not in ARM_STYLES:
            problems.append(f"arm_style={self.arm_style!r}: expected one of {list(ARM_STYLES)}")
        if self.render_resolution < 2 or self.render_resolution % 2:
            problems.append(f"render_resolution={self.render_resolution}: expected an even size >= 2")
        if len(self.light_scale) != 2 or not 0 < self.light_scale[0] <= self.light_scale[1]:
            problems.append(f"light_scale={self.light_scale}: expected [low, high] with 0 < low <= high")
        if not 0.0 <= self.colour_jitter <= 1.0:
            problems.append(f"colour_jitter={self.colour_jitter}: expected a value in [0, 1]")
        if problems:
            raise StandinError("stand-in video: " + "; ".join(problems))


def _rng(seed: int, task: str, video: int) -> np.random.Generator:
    digest = hashlib.sha256(f"vpdd-standin:{int(seed)}:{task}:{int(video)}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def video_settings(spec: StandinSpec, task: str, video: int) -> dict[str, Any]:
    """The drawn look of video ``video`` of ``task``: camera, skin tone, light scale and colour shift."""
    rng = _rng(spec.seed, task, video)
    offset = int.from_bytes(hashlib.sha256(task.encode()).digest()[:2], "little")
    s = spec.colour_jitter
    lo, hi = spec.light_scale
    tone = np.asarray(SKIN_TONES[int(rng.integers(len(SKIN_TONES)))]) * rng.uniform(0.92, 1.08)
    return {
        "camera": spec.cameras[(offset + video) % len(spec.cameras)],  # rotates over the cameras
        "skin_tone": [round(float(v), 4) for v in np.clip(tone, 0.0, 1.0)],
        "light_scale": round(float(rng.uniform(lo, hi)), 4),
        "brightness": round(float(rng.uniform(1 - 0.4 * s, 1 + 0.4 * s)), 4),
        "white_balance": [round(float(v), 4) for v in rng.uniform(1 - 0.25 * s, 1 + 0.25 * s, size=3)],
        "hue_degrees": round(float(rng.uniform(-40 * s, 40 * s)), 3),
    }


def _subtree(model: Any, root: int) -> set[int]:
    inside = {root}
    for body in range(model.nbody):  # MuJoCo orders bodies so that parents come first
        if model.body_parentid[body] in inside and body != 0:
            inside.add(body)
    return inside


def robot_parts(model: Any) -> dict[str, list[int]]:
    """Geom and site ids of the Sawyer by part: ``gripper`` (the ``hand`` body and its fingers), ``arm``
    (the links from ``right_l1`` to the wrist) and ``body`` (base, pedestal, torso, head, shoulder)."""
    import mujoco

    ids = {name: mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, name) for name in ("base", "right_l1", "hand")}
    if min(ids.values()) < 0:
        raise StandinError(f"the Meta-World model has no Sawyer bodies {[n for n, i in ids.items() if i < 0]}")
    gripper = _subtree(model, ids["hand"])
    arm = _subtree(model, ids["right_l1"]) - gripper
    body = _subtree(model, ids["base"]) - gripper - arm
    out: dict[str, list[int]] = {}
    for part, bodies in (("gripper", gripper), ("arm", arm), ("body", body)):
        out[f"{part}_geoms"] = [g for g in range(model.ngeom) if model.geom_bodyid[g] in bodies]
        out[f"{part}_sites"] = [s for s in range(model.nsite) if model.site_bodyid[s] in bodies]
    return out


def apply_embodiment(model: Any, arm_style: str, tone: list[float]) -> dict[str, list[int]]:
    """Hide (alpha 0) or recolour the robot in ``model`` in place; the gripper takes ``tone``."""
    parts = robot_parts(model)
    rgba = [*tone, 1.0]
    for g in parts["gripper_geoms"]:
        if model.geom_rgba[g][3] > 0:  # invisible helper geoms stay invisible
            model.geom_rgba[g] = rgba
            model.geom_matid[g] = -1  # a material's colour would override geom_rgba
    for g in parts["arm_geoms"]:
        if arm_style == "hidden":
            model.geom_rgba[g][3] = 0.0
        elif model.geom_rgba[g][3] > 0:
            model.geom_rgba[g] = rgba
            model.geom_matid[g] = -1
    for g in parts["body_geoms"]:
        model.geom_rgba[g][3] = 0.0
    for s in parts["arm_sites"] + parts["body_sites"]:
        model.site_rgba[s][3] = 0.0
    return parts


def apply_lighting(model: Any, scale: float) -> None:
    """Scale every light's diffuse and specular colour and the headlight's diffuse and ambient."""
    model.light_diffuse[:] = np.clip(model.light_diffuse * scale, 0.0, 1.0)
    model.light_specular[:] = np.clip(model.light_specular * scale, 0.0, 1.0)
    model.vis.headlight.diffuse[:] = np.clip(np.asarray(model.vis.headlight.diffuse) * scale, 0.0, 1.0)
    model.vis.headlight.ambient[:] = np.clip(np.asarray(model.vis.headlight.ambient) * scale, 0.0, 1.0)


def colour_matrix(brightness: float, white_balance: list[float], hue_degrees: float) -> np.ndarray:
    """The 3x3 RGB transform: a rotation by ``hue_degrees`` about the grey axis, then per-channel gains."""
    theta = math.radians(hue_degrees)
    k = np.full(3, 1 / math.sqrt(3))
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    rot = math.cos(theta) * np.eye(3) + math.sin(theta) * cross + (1 - math.cos(theta)) * np.outer(k, k)
    return brightness * np.diag(white_balance) @ rot


def colour_shift(frames: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply ``matrix`` to every RGB pixel of uint8 ``frames`` (float64, rounded, clipped)."""
    out = np.einsum("...c,dc->...d", frames.astype(np.float64), matrix)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def make_env(spec: StandinSpec, task: str, look: dict[str, Any]) -> Any:
    """A fresh :class:`~vpdd.envs.metaworld.MetaWorldEnv` with the video's camera, robot look and lighting."""
    from vpdd.envs.metaworld import MetaWorldEnv

    env = MetaWorldEnv(task, look["camera"], spec.render_resolution, True, True, spec.render_backend,
                       max_episode_steps=spec.max_steps + 1, crop=spec.crop)
    apply_embodiment(env.raw.model, spec.arm_style, look["skin_tone"])
    apply_lighting(env.raw.model, look["light_scale"])
    return env


def render_video(spec: StandinSpec, task: str, look: dict[str, Any], scene_seed: int) -> tuple[np.ndarray, bool]:
    """The colour-shifted frames of one scripted episode of ``task`` and whether it succeeded."""
    from vpdd.data.collect import rollout
    from vpdd.envs.metaworld import scripted_policy

    with make_env(spec, task, look) as env:
        episode = rollout(env, scripted_policy(task), scene_seed, spec.max_steps, spec.steps_after_success)
    matrix = colour_matrix(look["brightness"], look["white_balance"], look["hue_degrees"])
    return colour_shift(episode.frames, matrix), bool(episode.meta["success"])


def _own_output(folder: Path) -> bool:
    """a file render-standin-video does not write (it writes only standin_<task>_<NNN>.mp4 and .txt files)"""
    return all(NAME.fullmatch(p.name) for p in folder.iterdir())


def render_standin(spec: StandinSpec, out: str | Path, progress: bool = True, force: bool = False) -> dict[str, Any]:
    """Render ``spec.videos_per_task`` stand-in videos of each task into ``out`` (replaced atomically).

    Failed scripted episodes are dropped and retried on the next scene, up to ``max_attempts_per_video``
    attempts per video on average; fewer successes than asked is a :class:`StandinError`. Returns the report:
    the spec, counts and one entry per video with its scene seed and drawn look."""
    from tqdm import tqdm

    from vpdd.data.collect import episode_seed
    from vpdd.data.video import write_video

    start = time.perf_counter()
    n_captioned = round(spec.captioned_fraction * spec.videos_per_task)
    videos, attempts, failures = [], {}, {}
    with atomic_directory(out, marker=_own_output, force=force) as tmp:
        bar = tqdm(total=spec.videos_per_task * len(spec.tasks), desc="stand-in", unit="video",
                   disable=not progress)
        for task in spec.tasks:
            attempt, budget = 0, spec.videos_per_task * spec.max_attempts_per_video
            for k in range(spec.videos_per_task):
                look = video_settings(spec, task, k)
                while True:
                    if attempt >= budget:
                        raise StandinError(
                            f"stand-in video: {task}: only {k} of {spec.videos_per_task} scripted episodes "
                            f"succeeded within {budget} attempts; raise data.standin.max_attempts_per_video")
                    seed = episode_seed(spec.seed, task, attempt)
                    attempt += 1
                    frames, success = render_video(spec, task, look, seed)
                    if success:
                        break
                    failures[task] = failures.get(task, 0) + 1
                    log.info("%s: scene %d failed; trying the next scene", task, seed)
                name = f"standin_{task}_{k:03d}"
                write_video(tmp / f"{name}.mp4", frames, fps=spec.fps)
                captioned = k < n_captioned
                if captioned:
                    (tmp / f"{name}.txt").write_text(caption(task) + "\n")
                videos.append({"name": name, "task": task, "scene_seed": int(seed), "attempt": attempt - 1,
                               "frames": int(len(frames)), "captioned": captioned, **look})
                bar.update(1)
            attempts[task] = attempt
        bar.close()
    seconds = time.perf_counter() - start
    log.info("rendered %d stand-in videos in %.1f s", len(videos), seconds)
    spec_out = asdict(spec)
    spec_out["light_scale"] = list(spec.light_scale)
    return {
        "spec": spec_out,
        "videos": len(videos),
        "captioned": sum(v["captioned"] for v in videos),
        "frames": sum(v["frames"] for v in videos),
        "attempts": sum(attempts.values()),
        "failures": sum(failures.values()),
        "per_task": {t: {"videos": sum(v["task"] == t for v in videos), "attempts": attempts.get(t, 0),
                         "failures": failures.get(t, 0)} for t in spec.tasks},
        "per_video": videos,
        "seconds": round(seconds, 2),  # wall time; not deterministic (the CLI keeps it out of the report file)
    }


def standin_spec(cfg: Any) -> StandinSpec:
    """The :class:`StandinSpec` of a loaded config (``data.standin``, with the env's backend and camera)."""
    s = cfg.data.standin
    return StandinSpec(
        tasks=list(s.tasks), videos_per_task=s.videos_per_task, seed=s.seed, render_resolution=s.render_resolution,
        crop=s.crop, fps=s.fps, captioned_fraction=s.captioned_fraction, arm_style=s.arm_style,
        cameras=list(s.cameras), light_scale=tuple(s.light_scale), colour_jitter=s.colour_jitter,
        max_steps=s.max_steps, steps_after_success=s.steps_after_success,
        max_attempts_per_video=s.max_attempts_per_video, render_backend=cfg.env.render_backend,
        fine_tuning_tasks=list(cfg.data.robot.tasks), demo_camera=cfg.env.camera,
    )
