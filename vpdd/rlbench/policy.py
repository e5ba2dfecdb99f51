"""``RLBenchPolicy``: a fine-tuned multi-view VPDD policy that predicts keyframe end-effector actions.

The same contract as :class:`~vpdd.policy.VPDDPolicy` (an ``nn.Module``; rollout state in the policy, the
maths in the inner model and scheduler)::

    policy = RLBenchPolicy.from_pretrained("models/rlbench/policy")
    policy.reset(seed=0)
    views = {"front": img, "left_shoulder": img, "right_shoulder": img, "wrist": img}
    action = policy.select_action(views, "pick up the red block")   # (8,): the next keyframe
    chunk = policy.predict_action_chunk(views, instruction)         # (chunk, 8): every predicted keyframe
    out = policy.predict(views, instruction)                        # actions, bins, predicted video tokens
    loss, info = policy.forward(batch)                              # the training loss (batch untouched)
    policy.save_pretrained("some/dir")

**Observations** are one uint8 (H, W, 3) image per camera of the checkpoint (``config.json`` ->
``data.demonstrations.cameras``), at any size: they are resized as the PerAct reader resizes frames
(centre square crop, bilinear) to the tokenizer's resolution. The policy keeps the last ``encode_window``
frames of every camera (the first one repeated at an episode start, the token cache's window convention),
encodes each camera's window with the VQ-VAE and joins the grids view after view: the history of the
multi-view sequence. One environment at a time (RLBench runs one simulator per process).

**Actions.** One joint reverse diffusion (from all-[MASK]) predicts every view's future clip and
``chunk`` keyframes of 7 tokens; :class:`~vpdd.rlbench.keyframes.PoseActionCoder` (saved in the checkpoint)
decodes them to RLBench end-effector actions ``[x, y, z, qx, qy, qz, qw, gripper_open]``, the input of
RLBench's ``MoveArmThenGripper(EndEffectorPoseViaPlanning(), Discrete())``. :meth:`select_action` executes
the first ``execute_steps`` keyframes of each chunk from a queue (default 1, PerAct's loop: predict, move to
the keyframe, observe, predict again) and always records the new frames. ``predict`` and
``predict_action_chunk`` do not touch the frame history.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vpdd.models.checkpoint import KIND_POLICY, LoadedCheckpoint
from vpdd.policy.base import CheckpointPolicy, PolicyError, check_instructions
from vpdd.rlbench import network as _network  # noqa: F401  (registers the "multiview" action network)
from vpdd.rlbench.keyframes import DIMS, KIND, PoseActionCoder

ACTION_DIM = 8  # x, y, z, qx, qy, qz, qw, gripper open


@dataclass
class KeyframePrediction:
    actions: np.ndarray  # (chunk, 8) float32: xyz, quaternion xyzw, gripper open
    bins: np.ndarray  # (chunk * 7,) int64 action bins
    video_tokens: torch.Tensor  # (V, t, h, w) predicted future grids, one per camera
    history_tokens: torch.Tensor  # (V, t, h, w)


class RLBenchPolicy(CheckpointPolicy):
    def __init__(self, loaded: LoadedCheckpoint, **kwargs: Any):
        """``kwargs``: ``execute_steps``, ``sampling_stride``, ``truncation_r``, ``seed``, ``device``."""
        config = loaded.config
        demos = (config.get("data") or {}).get("demonstrations") or {}
        actions = config.get("actions") or {}
        if config.get("kind") != KIND_POLICY or demos.get("benchmark") != "rlbench" or actions.get("kind") != KIND:
            raise PolicyError(f"{loaded.path}: not an RLBench keyframe policy (kind {config.get('kind')!r}, "
                              f"benchmark {demos.get('benchmark')!r}); fine-tune one with `vpdd rlbench finetune`")
        coder = PoseActionCoder.from_dict(actions)
        super().__init__(loaded, chunk=coder.chunk, **kwargs)
        self.cameras: list[str] = list(demos["cameras"])
        self.coder = coder
        self.keyframe_heuristic = dict(demos.get("keyframe_heuristic") or {})
        self.tasks: list[str] = list(demos.get("tasks") or [])
        self.trained_episodes: list[str] = list(demos.get("episodes") or [])  # the fine-tuning demonstrations

    def _views(self, views: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from vpdd.rlbench.reader import PerActFormatError, resize_frame

        if not isinstance(views, Mapping):
            raise PolicyError(f"observation: expected {{camera: uint8 (H, W, 3) image}} for {self.cameras}, got "
                              f"{type(views).__name__}")
        missing = [c for c in self.cameras if c not in views]
        if missing:
            raise PolicyError(f"observation: missing cameras {missing}; this policy reads {self.cameras}")
        try:
            return {c: resize_frame(views[c], self.resolution) for c in self.cameras}
        except PerActFormatError as err:
            raise PolicyError(f"observation: {err}") from None

    def observe(self, views: Mapping[str, np.ndarray]) -> None:
        """Record one frame per camera without acting (e.g. frames seen before the policy takes over)."""
        self._windows(self._views(views), record=True)

    def _windows(self, frames: dict[str, np.ndarray], record: bool) -> np.ndarray:
        """Each camera's frame window, (V, W, H, W, 3) in ``cameras`` order (the cameras are the window's
        streams)."""
        return self._window(np.stack([frames[c] for c in self.cameras]), record)

    # -------------------------------------------------------------------------------------- inference
    def _predict(self, windows: np.ndarray, instruction: str) -> KeyframePrediction:
        history = self._encode_windows(windows)  # (V, t, h, w)
        video, action = self._sample(history.reshape(1, -1), [instruction])
        bins = self.layout.tokens_to_actions(action).cpu().numpy()[0]
        return KeyframePrediction(self.coder.decode_chunk_poses(bins), bins,
                                  video.reshape(len(self.cameras), *self.grid), history)

    @staticmethod
    def _instruction(instruction: str) -> str:
        if not isinstance(instruction, str):
            raise PolicyError(f"instruction: expected one string (one environment), got {type(instruction).__name__}")
        return check_instructions(instruction, 1)[0]

    def predict(self, views: Mapping[str, np.ndarray], instruction: str) -> KeyframePrediction:
        """One joint sample of every view's future and ``chunk`` keyframes (does not touch the frame history)."""
        return self._predict(self._windows(self._views(views), record=False), self._instruction(instruction))

    def predict_action_chunk(self, views: Mapping[str, np.ndarray], instruction: str) -> np.ndarray:
        """The predicted keyframes, (chunk, 8) float32 (does not touch the frame history)."""
        return self.predict(views, instruction).actions

    def select_action(self, views: Mapping[str, np.ndarray], instruction: str) -> np.ndarray:
        """The next keyframe action (8,) float32: from the queue, or a new chunk when it is empty."""
        windows = self._windows(self._views(views), record=True)
        return self._next_action(lambda: self._predict(windows, self._instruction(instruction)).actions, time_axis=0)

    # --------------------------------------------------------------------------------------- training
    def _tokens(self, batch: dict[str, Any], key: str) -> torch.Tensor:
        if key in batch:
            tokens = torch.as_tensor(batch[key]).to(self.device, torch.long)
            tokens = tokens.reshape(len(tokens), -1)
        else:
            frames = batch.get(f"{key}_frames")
            if frames is None:
                raise PolicyError(f"batch: expected '{key}' tokens (B, views, t, h, w) or '{key}_frames' uint8 "
                                  f"windows (B, views, {self.window}, {self.resolution}, {self.resolution}, 3)")
            frames = np.asarray(frames)
            want = (len(self.cameras), self.window, self.resolution, self.resolution, 3)
            if frames.dtype != np.uint8 or frames.ndim != 6 or frames.shape[1:] != want:
                raise PolicyError(f"batch['{key}_frames']: expected uint8 (B, {', '.join(map(str, want))}) "
                                  f"(views in the order {self.cameras}), got {frames.dtype} {frames.shape}")
            # the views one after another, as the token cache's pairs
            tokens = self._encode_windows(frames.reshape(-1, *want[1:])).reshape(len(frames), -1)
        if tokens.shape[1] != self.layout.n_video_tokens:
            raise PolicyError(f"batch['{key}']: {tokens.shape[1]} video tokens per sample, expected "
                              f"{self.layout.n_video_tokens} ({len(self.cameras)} views x {self.grid})")
        return tokens

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The diffusion training loss of a batch (never modified):

        ``history``/``target``: (B, V, t, h, w) or (B, N_v) multi-view tokens (or ``history_frames`` /
        ``target_frames``: uint8 windows (B, V, W, S, S, 3) to encode, views in ``cameras`` order);
        ``actions``: (B, chunk, 8) RLBench keyframe actions or ``action_bins``: (B, chunk * 7) bins;
        ``instruction``: B strings or ``lang``: (B, L) embeddings; optional ``generator``. Updates the
        scheduler's importance-sampling history only in training mode."""
        history, target = self._tokens(batch, "history"), self._tokens(batch, "target")
        n = history.shape[0]
        bins = self._bins(batch, n)
        if bins is None and "actions" in batch:
            a = np.asarray(batch["actions"], dtype=np.float64)
            if a.shape != (n, self.chunk, ACTION_DIM):
                raise PolicyError(f"batch['actions']: expected ({n}, {self.chunk}, {ACTION_DIM}) keyframe actions "
                                  f"[x, y, z, qx, qy, qz, qw, gripper_open], got {a.shape}")
            bins = torch.from_numpy(self.coder.encode_pose(a[..., :7], a[..., 7]).reshape(n, -1)).to(self.device)
        elif bins is None:
            raise PolicyError(f"batch: expected 'actions' ({n}, {self.chunk}, {ACTION_DIM}) or 'action_bins' "
                              f"({n}, {self.chunk * len(DIMS)})")
        return self._loss(batch, history, target, bins)
