"""RLBench keyframe actions (algorithm.md §5.2): keyframe discovery and end-effector poses <-> tokens.

**Keyframes** (:func:`discover_keyframes`, the PerAct / C2F-ARM heuristic, written from its description):
frame i > 0 is a keyframe when the gripper's open state changes at i, when i is the last frame, or when the
arm *stopped* at i: every joint velocity within ``stopping_delta`` of 0 while the gripper state is the same
over frames i-2 .. i+1. After a stop the next ``stop_buffer`` frames cannot be stops (one pause gives one
keyframe, not a run of them), frames 0, 1 and T-2 are never stops, and when the last two keyframes are
adjacent the earlier one is dropped (a stop just before the end is the end).

**Targets** (:func:`keyframe_targets`): the action of step s is the pose at the first keyframe after s and
the ``chunk - 1`` keyframes after it. Past the last keyframe the chunk repeats the last keyframe (hold the
final pose) instead of the released code's zero padding, which is a real bin (class 0 = "gripper closed").

**Tokens** (:class:`PoseActionCoder`, 7 tokens per keyframe ``[x, y, z, rx, ry, rz, open]``, all in one
``n_bins`` (360) action vocabulary):

* xyz: ``n_bins`` per-axis quantile bins fitted on the training poses (the Meta-World
  :class:`~vpdd.models.actions.ActionDiscretizer` machinery: a bin decodes to the mean of its data, point
  masses get their own bin, ``|decode(encode(x)) - x| <=`` the bin width inside the fitted range). The
  released code first maps xyz to [-1, 1] with fixed workspace bounds; quantile bins do not change under a
  monotone map, so that step is omitted.
* rotation: the quaternion (xyzw) as extrinsic 'xyz' Euler angles in degrees, ``+180``, divided by
  ``rotation_resolution`` (1 degree) and rounded, 360 wrapping to 0: 360 one-degree classes per axis. A class
  decodes to ``k * resolution - 180`` degrees, then to a unit quaternion with w >= 0. Each axis is off by at
  most half a class, so the decoded rotation is within 1.5 classes (degrees) of the original.
* gripper: ``gripper_open`` as class 0 (closed) or 1 (open).

The coder is an :class:`ActionDiscretizer` (same ``to_dict`` fields plus ``kind`` and
``rotation_resolution``), so the checkpoint loader rebuilds it generically and
``ActionDiscretizer.decode`` of its bins gives ``[x, y, z, rx, ry, rz (degrees), open]``.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import numpy as np

from vpdd.models.actions import ActionDiscretizer

KIND = "rlbench-keyframe"
DIMS = ("x", "y", "z", "rx", "ry", "rz", "open")


# ------------------------------------------------------------------------------------------------ keyframes
def discover_keyframes(
    gripper_open: np.ndarray, joint_velocities: np.ndarray, stopping_delta: float = 0.1, stop_buffer: int = 4
) -> list[int]:
    """Keyframe indices of one demonstration (see the module docstring); always ends with the last frame."""
    g = np.asarray(gripper_open, dtype=np.float64).reshape(-1)
    jv = np.asarray(joint_velocities, dtype=np.float64).reshape(len(g), -1)
    n = len(g)
    keys: list[int] = []
    buffer = 0
    for i in range(n):
        near_zero = bool(np.all(np.abs(jv[i]) <= stopping_delta))
        steady = 2 <= i < n - 2 and g[i] == g[i + 1] == g[i - 1] == g[i - 2]
        stopped = buffer <= 0 and near_zero and steady
        buffer = stop_buffer if stopped else buffer - 1
        if i > 0 and (g[i] != g[i - 1] or i == n - 1 or stopped):
            keys.append(i)
    if len(keys) > 1 and keys[-1] - 1 == keys[-2]:
        keys.pop(-2)
    return keys


def keyframe_targets(keyframes: list[int], length: int, chunk: int) -> np.ndarray:
    """(length, chunk) int64: for step s, the frames of the ``chunk`` keyframes after s (last one repeated)."""
    if not keyframes:
        raise ValueError("keyframe_targets: no keyframes (a demonstration of one frame?)")
    keys = sorted(int(k) for k in keyframes)
    out = np.empty((length, chunk), dtype=np.int64)
    for s in range(length):
        i = bisect.bisect_right(keys, s)
        nxt = keys[i : i + chunk] or [keys[-1]]
        out[s] = nxt + [nxt[-1]] * (chunk - len(nxt))
    return out


# ----------------------------------------------------------------------------------------------- rotations
def _normalize(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(norm < 1e-12):
        raise ValueError("quaternion of zero length")
    return q / norm


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """(..., 4) quaternions (x, y, z, w) -> (..., 3, 3) rotation matrices."""
    x, y, z, w = np.moveaxis(_normalize(q), -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def quat_to_euler(q: np.ndarray) -> np.ndarray:
    """(..., 4) quaternions (x, y, z, w) -> (..., 3) extrinsic 'xyz' Euler angles in degrees, in [-180, 180].

    R = Rz(c) Ry(b) Rx(a). In gimbal lock (|b| = 90 degrees) only a - c or a + c is defined; a is set to 0."""
    r = quat_to_matrix(q)
    sb = np.clip(-r[..., 2, 0], -1.0, 1.0)
    b = np.arcsin(sb)
    lock = np.abs(np.cos(b)) < 1e-6
    a = np.where(lock, 0.0, np.arctan2(r[..., 2, 1], r[..., 2, 2]))
    c = np.where(lock, np.arctan2(-r[..., 0, 1], r[..., 1, 1]), np.arctan2(r[..., 1, 0], r[..., 0, 0]))
    return np.degrees(np.stack([a, b, c], axis=-1))


def euler_to_quat(e: np.ndarray) -> np.ndarray:
    """(..., 3) extrinsic 'xyz' Euler angles in degrees -> (..., 4) unit quaternions (x, y, z, w), w >= 0."""
    half = np.radians(np.asarray(e, dtype=np.float64)) / 2
    ca, cb, cc = np.cos(half[..., 0]), np.cos(half[..., 1]), np.cos(half[..., 2])
    sa, sb, sc = np.sin(half[..., 0]), np.sin(half[..., 1]), np.sin(half[..., 2])
    q = np.stack([
        sa * cb * cc - ca * sb * sc,
        ca * sb * cc + sa * cb * sc,
        ca * cb * sc - sa * sb * cc,
        ca * cb * cc + sa * sb * sc,
    ], axis=-1)
    return np.where(q[..., 3:4] < 0, -q, q)


def rotation_angle(q1: np.ndarray, q2: np.ndarray) -> np.ndarray:
    """The angle in degrees of the rotation between two (batches of) quaternions."""
    d = np.abs(np.sum(_normalize(q1) * _normalize(q2), axis=-1))
    return np.degrees(2 * np.arccos(np.clip(d, 0.0, 1.0)))


# ------------------------------------------------------------------------------------------------- tokens
@dataclass
class PoseActionCoder(ActionDiscretizer):
    """Keyframe poses <-> 7 tokens per keyframe (see the module docstring)."""

    rotation_resolution: float = 1.0

    @property
    def n_rotation_bins(self) -> int:
        return int(round(360.0 / self.rotation_resolution))

    @classmethod
    def fit_poses(cls, poses: np.ndarray, n_bins: int = 360, chunk: int = 4,
                  rotation_resolution: float = 1.0) -> PoseActionCoder:
        """Fit the translation bins on (n, 7) or (n, 3) end-effector poses (the training demonstrations)."""
        poses = np.asarray(poses, dtype=np.float64)
        if poses.ndim != 2 or poses.shape[1] not in (3, 7) or not len(poses):
            raise ValueError(f"PoseActionCoder.fit_poses: expected (n, 7) poses with n > 0, got {poses.shape}")
        n_rot = int(round(360.0 / rotation_resolution))
        if abs(n_rot * rotation_resolution - 360.0) > 1e-9 or n_rot > n_bins:
            raise ValueError(
                f"rotation_resolution={rotation_resolution}: expected a divisor of 360 giving at most n_bins="
                f"{n_bins} classes per axis (the rotation classes share the action vocabulary)"
            )
        xyz = ActionDiscretizer.fit(poses[:, :3], n_bins=n_bins, chunk=chunk, gripper=False)
        rot = [float(k * rotation_resolution - 180.0) for k in range(n_rot)]
        return cls(n_bins=n_bins, chunk=chunk, edges=[*xyz.edges, [], [], [], []],
                   values=[*xyz.values, rot, list(rot), list(rot), [0.0, 1.0]],
                   kinds=[*xyz.kinds, "classes", "classes", "classes", "classes"],
                   rotation_resolution=float(rotation_resolution))

    # -------------------------------------------------------------------------- vectors <-> bins
    @staticmethod
    def pose_vector(pose: np.ndarray, gripper_open: np.ndarray) -> np.ndarray:
        """(..., 7) poses (xyz + quaternion xyzw) and (...,) open states -> (..., 7) [xyz, Euler deg, open]."""
        pose = np.asarray(pose, dtype=np.float64)
        if pose.shape[-1] != 7:
            raise ValueError(f"expected poses (..., 7) (xyz + quaternion xyzw), got {pose.shape}")
        grip = np.asarray(gripper_open, dtype=np.float64)[..., None]
        return np.concatenate([pose[..., :3], quat_to_euler(pose[..., 3:]), grip], axis=-1)

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """(..., 7) ``[xyz, Euler degrees, open]`` -> (..., 7) bins; the rotation classes wrap at +-180."""
        out = super().encode(actions)
        deg = np.asarray(actions, dtype=np.float64)[..., 3:6]
        n_rot = self.n_rotation_bins
        out[..., 3:6] = np.round((deg + 180.0) / self.rotation_resolution).astype(np.int64) % n_rot
        return out

    def decode(self, bins: np.ndarray) -> np.ndarray:
        """(..., 7) bins -> (..., 7) float64 ``[xyz, Euler degrees, open]`` (the base class gives float32; poses
        keep float64 so a point mass decodes exactly)."""
        bins = np.asarray(bins, dtype=np.int64)
        if bins.shape[-1] != self.dim:
            raise ValueError(f"expected bins with {self.dim} dimensions, got shape {bins.shape}")
        out = np.empty(bins.shape, dtype=np.float64)
        for d in range(self.dim):
            v = np.asarray(self.values[d], dtype=np.float64)
            out[..., d] = v[np.clip(bins[..., d], 0, len(v) - 1)]
        return out

    def encode_pose(self, pose: np.ndarray, gripper_open: np.ndarray) -> np.ndarray:
        return self.encode(self.pose_vector(pose, gripper_open))

    def decode_pose(self, bins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(..., 7) bins -> (poses (..., 7) xyz + unit quaternion xyzw, gripper open (...,) in {0, 1})."""
        vec = self.decode(bins)
        quat = euler_to_quat(vec[..., 3:6])
        return np.concatenate([vec[..., :3], quat], axis=-1), vec[..., 6]

    def decode_chunk_poses(self, tokens: np.ndarray) -> np.ndarray:
        """(..., chunk * 7) tokens -> (..., chunk, 8) RLBench end-effector actions [xyz, quat xyzw, open]."""
        tokens = np.asarray(tokens)
        pose, grip = self.decode_pose(tokens.reshape(*tokens.shape[:-1], self.chunk, len(DIMS)))
        return np.concatenate([pose, grip[..., None]], axis=-1).astype(np.float32)

    # ------------------------------------------------------------------------------- serialise
    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "kind": KIND, "dims": list(DIMS), "rotation_resolution": self.rotation_resolution}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PoseActionCoder:
        if data.get("kind") != KIND:
            raise ValueError(f"not an RLBench keyframe action coder (kind={data.get('kind')!r}, expected {KIND!r})")
        base = ActionDiscretizer.from_dict(data)
        return cls(n_bins=base.n_bins, chunk=base.chunk, edges=base.edges, values=base.values, kinds=base.kinds,
                   rotation_resolution=float(data["rotation_resolution"]))
