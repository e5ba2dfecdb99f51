"""``RLBenchPolicy``: a fine-tuned multi-view VPDD policy that predicts keyframe end-effector actions.

::

    policy = RLBenchPolicy.from_pretrained("models/rlbench/policy")
    policy.reset(seed=0)
    action = policy.act({"front": img, "left_shoulder": img, ...}, "pick up the red block")   # (8,)
    out = policy.predict(views, instruction)   # all `chunk` keyframes, bins, predicted video tokens

**Observations** are one uint8 (H, W, 3) image per camera of the checkpoint (``config.json`` ->
``data.demonstrations.cameras``), at any size: they are resized as the PerAct reader resizes frames
(centre square crop, bilinear) to the tokenizer's resolution. The policy keeps the last ``encode_window``
frames of every camera (the first one repeated at an episode start, the token cache's window convention),
encodes each camera's window with the VQ-VAE and joins the grids view after view: the history of the
multi-view sequence.

**Actions.** One joint reverse diffusion (from all-[MASK]) predicts every view's future clip and
``chunk`` keyframes of 7 tokens; :class:`~vpdd.models.keyframes.PoseActionCoder` (saved in the checkpoint)
decodes them to RLBench end-effector actions ``[x, y, z, qx, qy, qz, qw, gripper_open]``, the input of
RLBench's ``MoveArmThenGripper(EndEffectorPoseViaPlanning(), Discrete())``. :meth:`act` returns the first
keyframe (PerAct's loop: predict, move to the keyframe, observe, predict again).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vpdd.models.checkpoint import KIND_POLICY, LoadedCheckpoint, load_vpdd_checkpoint
from vpdd.models.keyframes import KIND, PoseActionCoder
from vpdd.models.model import sample_tokens
from vpdd.policy.policy import PolicyError


@dataclass
class KeyframePrediction:
    actions: np.ndarray  # (chunk, 8) float32: xyz, quaternion xyzw, gripper open
    bins: np.ndarray  # (chunk * 7,) int64 action bins
    video_tokens: torch.Tensor  # (V, t, h, w) predicted future grids, one per camera
    history_tokens: torch.Tensor  # (V, t, h, w)


class RLBenchPolicy:
    def __init__(self, loaded: LoadedCheckpoint, *, sampling_stride: int | None = None,
                 truncation_r: float | None = None, seed: int = 0, device: str | torch.device = "cpu"):
        config = loaded.config
        demos = (config.get("data") or {}).get("demonstrations") or {}
        actions = config.get("actions") or {}
        if config.get("kind") != KIND_POLICY or demos.get("benchmark") != "rlbench" or actions.get("kind") != KIND:
            raise PolicyError(f"{loaded.path}: not an RLBench keyframe policy (kind {config.get('kind')!r}, "
                              f"benchmark {demos.get('benchmark')!r}); fine-tune one with `vpdd rlbench finetune`")
        self.loaded, self.path = loaded, loaded.path
        self.model, self.tokenizer, self.scheduler, self.table = (loaded.model, loaded.tokenizer, loaded.scheduler,
                                                                  loaded.table)
        self.layout = loaded.spec.layout
        self.coder = PoseActionCoder.from_dict(actions)
        self.cameras: list[str] = list(demos["cameras"])
        self.keyframe_heuristic = dict(demos.get("keyframe_heuristic") or {})
        self.tasks: list[str] = list(demos.get("tasks") or [])
        self.trained_episodes: list[str] = list(demos.get("episodes") or [])  # the fine-tuning demonstrations
        tok = config["tokenizer"]["config"]
        self.window, self.resolution = int(tok["encode_window"]), int(tok["resolution"])
        self.grid = tuple(int(g) for g in tok["latent_shape"])
        self.sampling_stride, self.truncation_r = sampling_stride, truncation_r
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.table.set_encoder_factory(self._text_encoder)
        self.reset(seed)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", **kwargs: Any) -> RLBenchPolicy:
        return cls(load_vpdd_checkpoint(path, device=device), device=device, **kwargs)

    def _text_encoder(self):
        """The checkpoint's text encoder, for instructions not in its table (refused if the weights differ)."""
        from vpdd.config.model import LanguageConfig
        from vpdd.models.language import build_text_encoder, encoder_identity

        lang = self.loaded.config["language"]
        cfg = LanguageConfig(**lang["config"])
        now = encoder_identity(cfg)
        if now.get("weights_sha256") != lang.get("weights_sha256") or now["dim"] != lang["dim"]:
            raise PolicyError(f"cannot embed a new instruction: the text encoder here ({now}) is not the one the "
                              "policy was trained with")
        return build_text_encoder(cfg)

    @property
    def chunk(self) -> int:
        return self.coder.chunk

    def reset(self, seed: int | None = None) -> None:
        """A new episode: forget the frame history; reseed the sampler when ``seed`` is given."""
        self._frames: dict[str, deque[np.ndarray]] = {c: deque(maxlen=self.window) for c in self.cameras}
        if seed is not None:
            self.generator.manual_seed(int(seed))

    def _views(self, views: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from vpdd.data.peract import PerActFormatError, resize_frame

        missing = [c for c in self.cameras if c not in views]
        if missing:
            raise PolicyError(f"observation: missing cameras {missing}; this policy reads {self.cameras}")
        try:
            return {c: resize_frame(views[c], self.resolution) for c in self.cameras}
        except PerActFormatError as err:
            raise PolicyError(f"observation: {err}") from None

    def observe(self, views: Mapping[str, np.ndarray]) -> None:
        """Record one frame per camera without acting."""
        for c, frame in self._views(views).items():
            self._frames[c].append(frame)

    def _windows(self, frames: dict[str, np.ndarray], record: bool) -> np.ndarray:
        out = []
        for c in self.cameras:
            seen = [*self._frames[c], frames[c]][-self.window:]
            out.append(np.stack([seen[0]] * (self.window - len(seen)) + seen))
        if record:
            for c in self.cameras:
                self._frames[c].append(frames[c])
        return np.stack(out)  # (V, W, H, W, 3)

    @torch.no_grad()
    def predict(self, views: Mapping[str, np.ndarray], instruction: str, record: bool = True) -> KeyframePrediction:
        """Sample the future views and ``chunk`` keyframe actions for the current frames ``views``."""
        from vpdd.tokenizer.model import to_model_input

        windows = self._windows(self._views(views), record)
        clips = to_model_input(torch.from_numpy(np.ascontiguousarray(windows)).to(self.device))
        history = self.tokenizer.encode(clips)  # (V, t, h, w)
        lang = self.table.lookup([instruction]).to(self.device)
        x = sample_tokens(self.model, self.scheduler, history.reshape(1, -1), lang, self.generator,
                          stride=self.sampling_stride, truncation_r=self.truncation_r)
        video, action = self.layout.split(x)
        bins = self.layout.tokens_to_actions(action).cpu().numpy()[0]
        return KeyframePrediction(self.coder.decode_chunk_poses(bins), bins,
                                  video.reshape(len(self.cameras), *self.grid), history)

    def act(self, views: Mapping[str, np.ndarray], instruction: str) -> np.ndarray:
        """The next keyframe action (8,) for the current frames (recorded in the history)."""
        return self.predict(views, instruction, record=True).actions[0]
