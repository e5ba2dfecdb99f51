"""Synthetic RLBench demonstrations written in PerAct's on-disk format (``vpdd rlbench generate``).

RLBench needs CoppeliaSim, which cannot be installed here, and PerAct's dataset cannot be downloaded, so
the RLBench path is exercised on generated data that has the real format byte for byte where it matters:
the folder layout of :mod:`vpdd.rlbench.reader`, one PNG per camera and step, and ``low_dim_obs.pkl`` pickled
with RLBench's module/class names (``rlbench.demo.Demo`` holding ``rlbench.backend.observation.Observation``
with PerAct's 31 fields: gripper pose and matrix, joint positions/velocities/forces, finger positions,
task state, camera extrinsics/intrinsics in ``misc``, image fields None), so the reader meets what it
would meet in PerAct's data.

Scenes: a table with coloured blocks, targets or buttons and a two-finger gripper, rendered by a small
numpy rasterizer (convex hulls of projected boxes, painter's order) from pinhole cameras placed like
RLBench's front, left/right shoulder, wrist (moving with the gripper) and overhead cameras. Tasks
(:data:`vpdd.config.rlbench.SYNTHETIC_TASKS`) are scripted waypoint sequences; the variation picks the
colour named in the instruction. Between waypoints the gripper moves at constant speed, and it rests for
``pause_steps`` frames at some waypoints, so the keyframe heuristic finds stops and gripper changes as in
real demonstrations. Joint positions are a fixed linear map of the gripper pose; joint velocities are their
finite differences plus a little noise.

Everything is a function of ``(seed, task, episode)``: the same config writes the same bytes.
"""

from __future__ import annotations

import io
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vpdd.config.rlbench import SYNTHETIC_TASKS
from vpdd.rlbench.keyframes import euler_to_quat, quat_to_matrix
from vpdd.rlbench.reader import (
    ALL_CAMERAS,
    DESCRIPTIONS_PICKLE,
    EPISODES_SUBDIR,
    LOW_DIM_PICKLE,
    VARIATION_NUMBER_PICKLE,
    Demo,
    Observation,
    dumps_as_rlbench,
)
from vpdd.utils.io import atomic_directory

log = logging.getLogger(__name__)

COLOURS = {"red": (205, 45, 40), "green": (45, 170, 70), "blue": (50, 85, 215), "yellow": (225, 205, 45),
           "purple": (150, 60, 190), "orange": (235, 135, 35), "cyan": (40, 190, 200), "white": (235, 235, 235)}
VARIATION_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "white")
TABLE_TOP = 0.752
DT = 0.05  # seconds per step (joint velocities are finite differences)
_JOINT_MAP = np.random.default_rng(7).uniform(-1.5, 1.5, (7, 5))  # joint positions = A @ [x, y, z, yaw, pitch]
_JOINT_OFFSET = np.array([0.0, 0.2, 0.0, -2.0, 0.0, 2.2, 0.8])
_CAMERA_POSES = {  # position, look-at point, focal length (in image widths)
    "front": ((1.25, 0.0, 1.4), (0.2, 0.0, 0.82), 1.6),
    "left_shoulder": ((-0.2, 0.45, 1.4), (0.22, -0.02, 0.8), 1.25),
    "right_shoulder": ((-0.2, -0.45, 1.4), (0.22, 0.02, 0.8), 1.25),
    "overhead": ((0.2, 0.0, 2.1), (0.2, 0.0, 0.75), 1.0),
}
_BACKGROUND = {"front": (70, 80, 95), "left_shoulder": (85, 75, 70), "right_shoulder": (70, 85, 75),
               "wrist": (60, 60, 60), "overhead": (90, 90, 100)}
OBS_FIELDS = (
    "left_shoulder_rgb", "left_shoulder_depth", "left_shoulder_mask", "left_shoulder_point_cloud",
    "right_shoulder_rgb", "right_shoulder_depth", "right_shoulder_mask", "right_shoulder_point_cloud",
    "overhead_rgb", "overhead_depth", "overhead_mask", "overhead_point_cloud",
    "wrist_rgb", "wrist_depth", "wrist_mask", "wrist_point_cloud",
    "front_rgb", "front_depth", "front_mask", "front_point_cloud",
)


@dataclass
class Box:
    centre: np.ndarray  # (3,)
    half: np.ndarray  # (3,) half extents
    colour: tuple[int, int, int]
    yaw: float = 0.0  # degrees about z


@dataclass
class Waypoint:
    pos: np.ndarray  # (3,) gripper position
    yaw: float  # degrees
    pitch: float  # degrees
    open: bool
    pause: bool = False  # rest here (a keyframe by the stop heuristic)
    carry: int | None = None  # index of the box that moves with the gripper on the way here


# ---------------------------------------------------------------------------------------------- tasks
def _block(rng: np.random.Generator, colour: str, xy: np.ndarray | None = None) -> Box:
    xy = rng.uniform([0.05, -0.25], [0.35, 0.25]) if xy is None else xy
    return Box(np.array([xy[0], xy[1], TABLE_TOP + 0.025]), np.array([0.025, 0.025, 0.025]), COLOURS[colour],
               float(rng.uniform(-30, 30)))


def _apart(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    while True:
        pts = [rng.uniform([0.05, -0.25], [0.35, 0.25]) for _ in range(n)]
        if all(np.linalg.norm(a - b) > 0.14 for i, a in enumerate(pts) for b in pts[i + 1:]):
            return pts


def _pick_up_block(rng, colour, other):
    a, b = _apart(rng, 2)
    boxes = [_block(rng, colour, a), _block(rng, other, b)]
    t = boxes[0]
    top = t.centre + [0, 0, 0.03]
    start = Waypoint(np.array([0.2, 0.0, 1.1]), 0.0, 0.0, True)
    return boxes, [start,
                   Waypoint(top + [0, 0, 0.15], t.yaw, 0.0, True, pause=True),
                   Waypoint(top.copy(), t.yaw, 0.0, True, pause=True),
                   Waypoint(top.copy(), t.yaw, 0.0, False),
                   Waypoint(top + [0, 0, 0.25], t.yaw, float(rng.uniform(-8, 8)), False, pause=True, carry=0)], [
        f"pick up the {colour} block", f"grasp the {colour} block and lift it", f"lift the {colour} cube"]


def _slide_block_to_target(rng, colour, other):
    a, b = _apart(rng, 2)
    block = _block(rng, "white", a)
    target = Box(np.array([b[0], b[1], TABLE_TOP + 0.001]), np.array([0.05, 0.05, 0.001]), COLOURS[colour])
    distract = Box(np.array([0.45, -b[1], TABLE_TOP + 0.001]), np.array([0.04, 0.04, 0.001]), COLOURS[other])
    d = (b - a) / np.linalg.norm(b - a)
    behind = np.array([*(a - 0.06 * d), TABLE_TOP + 0.03])
    goal = np.array([*(b - 0.035 * d), TABLE_TOP + 0.03])
    yaw = float(np.degrees(np.arctan2(d[1], d[0])))
    start = Waypoint(np.array([0.2, 0.0, 1.1]), 0.0, 0.0, True)
    return [target, distract, block], [start,
                                       Waypoint(behind + [0, 0, 0.12], yaw, 0.0, False, pause=True),
                                       Waypoint(behind, yaw, 0.0, False, pause=True),
                                       Waypoint(goal, yaw, 0.0, False, pause=True, carry=2),
                                       Waypoint(goal + [0, 0, 0.15], yaw, 0.0, True)], [
        f"slide the block to the {colour} target", f"push the block onto the {colour} square",
        f"slide the cube until it is on the {colour} target"]


def _push_button(rng, colour, other):
    a, b = _apart(rng, 2)
    boxes = [Box(np.array([p[0], p[1], TABLE_TOP + 0.012]), np.array([0.03, 0.03, 0.012]), COLOURS[c])
             for p, c in ((a, colour), (b, other))]
    top = boxes[0].centre + [0, 0, 0.012]
    start = Waypoint(np.array([0.2, 0.0, 1.1]), 0.0, 0.0, False)
    return boxes, [start,
                   Waypoint(top + [0, 0, 0.12], 0.0, 0.0, False, pause=True),
                   Waypoint(top + [0, 0, 0.005], 0.0, 0.0, False, pause=True),
                   Waypoint(top + [0, 0, 0.2], float(rng.uniform(-20, 20)), 0.0, False)], [
        f"push the {colour} button", f"press the {colour} button", f"press down on the {colour} button"]


TEMPLATES = {"pick_up_block": _pick_up_block, "slide_block_to_target": _slide_block_to_target,
             "push_button": _push_button}
assert set(TEMPLATES) == set(SYNTHETIC_TASKS)


# ------------------------------------------------------------------------------------------ rendering
def _look_at(pos, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """World-to-camera rotation (rows: camera x right, y down, z forward)."""
    fwd = np.asarray(target, float) - np.asarray(pos, float)
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, up)
    if np.linalg.norm(right) < 1e-6:
        right = np.cross(fwd, (1.0, 0.0, 0.0))
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    return np.stack([right, down, fwd])


def _box_corners(box: Box) -> np.ndarray:
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
    c, s = np.cos(np.radians(box.yaw)), np.sin(np.radians(box.yaw))
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    return box.centre + (signs * box.half) @ rot.T


def _hull(points: np.ndarray) -> np.ndarray:
    pts = sorted(map(tuple, points))
    if len(pts) < 3:
        return np.asarray(pts)

    def half(seq):
        out: list[tuple] = []
        for p in seq:
            while len(out) >= 2 and ((out[-1][0] - out[-2][0]) * (p[1] - out[-2][1])
                                     - (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0])) <= 0:
                out.pop()
            out.append(p)
        return out

    lower, upper = half(pts), half(reversed(pts))
    return np.asarray(lower[:-1] + upper[:-1])


def _fill(img: np.ndarray, poly: np.ndarray, colour) -> None:
    if len(poly) < 3:
        return
    s = img.shape[0]
    lo = np.clip(np.floor(poly.min(0)).astype(int), 0, s - 1)
    hi = np.clip(np.ceil(poly.max(0)).astype(int), 0, s - 1)
    if (hi < lo).any():
        return
    ys, xs = np.mgrid[lo[1] : hi[1] + 1, lo[0] : hi[0] + 1] + 0.5
    inside = np.ones(xs.shape, bool)
    for (x0, y0), (x1, y1) in zip(poly, np.roll(poly, -1, axis=0), strict=True):
        inside &= (x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0) >= 0
    img[lo[1] : hi[1] + 1, lo[0] : hi[0] + 1][inside] = colour


class Camera:
    def __init__(self, name: str, size: int, pos, target, focal: float, up=(0.0, 0.0, 1.0)):
        self.name, self.size = name, size
        self.pos = np.asarray(pos, float)
        self.rot = _look_at(pos, target, up)
        self.f = focal * size

    def project(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cam = (pts - self.pos) @ self.rot.T
        z = np.maximum(cam[:, 2], 1e-3)
        uv = self.f * cam[:, :2] / z[:, None] + self.size / 2
        return uv, cam[:, 2]

    def extrinsics(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = self.rot.T
        m[:3, 3] = self.pos
        return m

    def intrinsics(self) -> np.ndarray:
        return np.array([[self.f, 0, self.size / 2], [0, self.f, self.size / 2], [0, 0, 1.0]])

    def render(self, boxes: list[Box]) -> np.ndarray:
        """The scene as seen from this camera; ``boxes[0]`` (the table) is drawn first, then far to near."""
        s = self.size
        img = np.empty((s, s, 3), np.uint8)
        base = np.asarray(_BACKGROUND[self.name], float)
        img[:] = (base[None, :] * np.linspace(1.15, 0.8, s)[:, None]).clip(0, 255).astype(np.uint8)[:, None, :]
        drawn = []
        for k, box in enumerate(boxes):
            corners = _box_corners(box)
            uv, depth = self.project(corners)
            if (depth <= 0.02).any():
                continue
            drawn.append((np.inf if k == 0 else float(np.mean(depth)), box, uv))
        for _, box, uv in sorted(drawn, key=lambda d: -d[0]):
            _fill(img, _hull(uv), box.colour)
            top = uv[[1, 3, 5, 7]]  # corners with +z
            _fill(img, _hull(top), tuple(min(255, int(c * 1.2) + 10) for c in box.colour))
        return img


def _cameras(size: int, grip_pos: np.ndarray, yaw: float) -> dict[str, Camera]:
    cams = {n: Camera(n, size, p, t, f) for n, (p, t, f) in _CAMERA_POSES.items()}
    heading = (np.cos(np.radians(yaw)), np.sin(np.radians(yaw)), 0.0)
    cams["wrist"] = Camera("wrist", size, grip_pos + [0, 0, 0.03], grip_pos - [0, 0, 1.0], 0.8, up=heading)
    return cams


def _gripper_boxes(pos: np.ndarray, yaw: float, finger: float) -> list[Box]:
    c, s = np.cos(np.radians(yaw)), np.sin(np.radians(yaw))
    side = np.array([-s, c, 0.0])
    dark = (40, 40, 45)
    palm = Box(pos + [0, 0, 0.06], np.array([0.015, 0.05, 0.012]), (110, 110, 120), yaw)
    fingers = [Box(pos + [0, 0, 0.025] + k * (finger + 0.008) * side, np.array([0.008, 0.006, 0.025]), dark, yaw)
               for k in (-1.0, 1.0)]
    return [palm, *fingers]


# --------------------------------------------------------------------------------------- trajectories
def _trajectory(rng: np.random.Generator, waypoints: list[Waypoint], boxes: list[Box], segment: int,
                pause: int) -> list[dict[str, Any]]:
    """Per-frame state: gripper position, yaw, pitch, open flag, and the box positions."""
    frames = []
    pos = [b.centre.copy() for b in boxes]
    w0 = waypoints[0]
    state = {"pos": w0.pos.copy(), "yaw": w0.yaw, "pitch": w0.pitch, "open": w0.open}
    frames.append({**state, "boxes": [p.copy() for p in pos]})
    for w in waypoints[1:]:
        n = max(2, segment + int(rng.integers(-2, 3)))
        if np.allclose(w.pos, state["pos"]):
            n = 2  # the gripper opens or closes in place
        start = dict(state)
        for k in range(1, n + 1):
            a = k / n
            new = start["pos"] + a * (w.pos - start["pos"])
            if w.carry is not None:  # the box moves with the gripper (never below its resting height)
                pos[w.carry] = pos[w.carry] + (new - state["pos"])
                pos[w.carry][2] = max(pos[w.carry][2], boxes[w.carry].centre[2])
            state = {"pos": new, "yaw": start["yaw"] + a * (w.yaw - start["yaw"]),
                     "pitch": start["pitch"] + a * (w.pitch - start["pitch"]), "open": w.open}
            frames.append({**state, "boxes": [p.copy() for p in pos]})
        for _ in range(pause if w.pause else 0):
            frames.append({**state, "boxes": [p.copy() for p in pos]})
    return frames


def _observations(rng: np.random.Generator, frames: list[dict[str, Any]], cams0: dict[str, Camera]) -> list:
    obs = []
    q_prev = None
    for f in frames:
        quat = euler_to_quat(np.array([180.0, f["pitch"], f["yaw"]]))
        pose = np.concatenate([f["pos"], quat])
        q = _JOINT_OFFSET + _JOINT_MAP @ np.array([*f["pos"], np.radians(f["yaw"]), np.radians(f["pitch"])])
        vel = np.zeros(7) if q_prev is None else (q - q_prev) / DT
        vel = vel + rng.normal(0.0, 0.004, 7)
        q_prev = q
        matrix = np.eye(4)
        matrix[:3, :3] = quat_to_matrix(quat)
        matrix[:3, 3] = f["pos"]
        finger = 0.04 if f["open"] else 0.0
        cams = _cameras(cams0["front"].size, f["pos"], f["yaw"])
        misc: dict[str, Any] = {}
        for name, cam in cams.items():
            misc[f"{name}_camera_extrinsics"] = cam.extrinsics()
            misc[f"{name}_camera_intrinsics"] = cam.intrinsics()
            misc[f"{name}_camera_near"] = 0.01
            misc[f"{name}_camera_far"] = 4.5
        fields = dict.fromkeys(OBS_FIELDS)
        fields.update(
            joint_velocities=vel, joint_positions=q, joint_forces=rng.normal(0.0, 0.5, 7),
            gripper_open=1.0 if f["open"] else 0.0, gripper_pose=pose, gripper_matrix=matrix,
            gripper_joint_positions=np.array([finger, finger]), gripper_touch_forces=np.zeros(6),
            task_low_dim_state=np.concatenate(f["boxes"]), ignore_collisions=np.array(1.0), misc=misc,
        )
        obs.append(Observation(**fields))
    return obs


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def generate_episode(task: str, variation: int, index: int, image_size: int, cameras: list[str] | tuple[str, ...],
                     segment_steps: int = 6, pause_steps: int = 2, seed: int = 0):
    """One synthetic demonstration: (Demo, {camera: (T, S, S, 3) uint8}, descriptions)."""
    if task not in TEMPLATES:
        raise ValueError(f"unknown synthetic task {task!r}; expected one of {list(TEMPLATES)}")
    rng = np.random.default_rng([seed, SYNTHETIC_TASKS.index(task), index, 17])
    colour = VARIATION_COLOURS[variation % len(VARIATION_COLOURS)]
    other = VARIATION_COLOURS[(variation + 1 + int(rng.integers(0, len(VARIATION_COLOURS) - 1)))
                              % len(VARIATION_COLOURS)]
    boxes, waypoints, descriptions = TEMPLATES[task](rng, colour, other)
    frames = _trajectory(rng, waypoints, boxes, segment_steps, pause_steps)
    cams = _cameras(image_size, frames[0]["pos"], frames[0]["yaw"])
    observations = _observations(rng, frames, cams)
    table = Box(np.array([0.2, 0.0, TABLE_TOP - 0.026]), np.array([0.33, 0.42, 0.026]), (150, 115, 80))
    images: dict[str, list[np.ndarray]] = {c: [] for c in cameras}
    for f in frames:
        scene = [table] + [Box(p, b.half, b.colour, b.yaw) for p, b in zip(f["boxes"], boxes, strict=True)]
        finger = 0.04 if f["open"] else 0.012
        cams = _cameras(image_size, f["pos"], f["yaw"])
        for c in cameras:
            extra = [] if c == "wrist" else _gripper_boxes(f["pos"], f["yaw"], finger)
            images[c].append(cams[c].render(scene + extra))
    demo = Demo(observations, random_seed=np.random.RandomState(index).get_state(), num_reset_attempts=None)
    return demo, {c: np.stack(v) for c, v in images.items()}, descriptions


def write_episode(folder: Path, demo: Demo, images: dict[str, np.ndarray], descriptions: list[str],
                  variation: int) -> None:
    """Write one episode folder in PerAct's format (inside an atomic directory of the caller)."""
    folder.mkdir(parents=True)
    for cam, frames in images.items():
        sub = folder / f"{cam}_rgb"
        sub.mkdir()
        for i, frame in enumerate(frames):
            (sub / f"{i}.png").write_bytes(_png(frame))
    (folder / LOW_DIM_PICKLE).write_bytes(dumps_as_rlbench(demo, protocol=4))
    (folder / DESCRIPTIONS_PICKLE).write_bytes(pickle.dumps(list(descriptions), protocol=4))
    (folder / VARIATION_NUMBER_PICKLE).write_bytes(pickle.dumps(int(variation), protocol=4))


def generate_dataset(out: str | Path, cfg, image_size: int, cameras: list[str] | tuple[str, ...] = ALL_CAMERAS[:4],
                     progress: bool = False, force: bool = False) -> dict[str, Any]:
    """Write the dataset of ``cfg`` (:class:`~vpdd.config.rlbench.RLBenchGenerateConfig`) to ``out``
    (replaced atomically); returns a summary."""
    from tqdm import tqdm

    out = Path(out)
    summary: dict[str, Any] = {"tasks": {}, "image_size": image_size, "cameras": list(cameras)}
    jobs = [(t, k) for t in cfg.tasks for k in range(cfg.episodes_per_task)]
    with atomic_directory(out, marker=f"*/{EPISODES_SUBDIR}", force=force) as tmp:
        for task, k in tqdm(jobs, desc="generate", unit="episode", disable=not progress, leave=False):
            variation = k % cfg.variations
            demo, images, desc = generate_episode(task, variation, k, image_size, cameras, cfg.segment_steps,
                                                  cfg.pause_steps, cfg.seed)
            write_episode(tmp / task / EPISODES_SUBDIR / f"episode{k}", demo, images, desc, variation)
            rec = summary["tasks"].setdefault(task, {"episodes": 0, "lengths": []})
            rec["episodes"] += 1
            rec["lengths"].append(len(demo))
    log.info("generated %d synthetic RLBench episodes in %s", len(jobs), out)
    return summary
