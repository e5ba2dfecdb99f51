"""``VPDDPolicy``: the fine-tuned VPDD model behind a LeRobot-style policy contract.

::

    policy = VPDDPolicy.from_pretrained("models/policy")      # self-contained checkpoint directory
    policy.reset(seed=0)                                       # new episode(s): clear frame history and queue
    action = policy.select_action({"image": frame}, "Press a button from the top.")   # (4,) float32
    chunk = policy.predict_action_chunk(obs, instruction)     # (chunk, D): the whole predicted chunk
    video = policy.predict_video(obs, instruction)            # (W, H, W, 3) uint8: decoded predicted future
    loss, info = policy.forward(batch)                         # the training loss (does not modify batch)
    policy.save_pretrained("some/dir")

**Observations.** ``observation`` is a uint8 frame ``(H, W, 3)`` at the tokenizer's resolution (or a batch
``(B, H, W, 3)`` for B environments stepped together), bare or as ``{"image": frame}``. The policy keeps
the last ``encode_window`` (4) frames per environment and encodes that window with the VQ-VAE, with the
token cache's convention: the window ends at the current frame and the first frame of the episode is
repeated until 4 frames have been seen. ``{"history": window}`` (``(W, H, W, 3)`` or batched) passes an
explicit window instead, without touching the stored history.

**Actions.** One joint reverse diffusion from all-[MASK] (``scheduler.sample``, ``sampling_stride`` and
``truncation_r`` default to the checkpoint's diffusion config) predicts the future clip's tokens and a chunk
of ``chunk`` (4) actions, decoded with the checkpoint's :class:`~vpdd.models.ActionDiscretizer`.
:meth:`select_action` executes the first ``execute_steps`` (the paper: 1) of each chunk from a queue and
predicts again when the queue is empty; it always records the new frame. Unbatched input gives unbatched
output. Randomness comes from the policy's generator: ``reset(seed=s)`` makes the next actions a function
of ``s`` and the observations.

**LeRobot batches.** :meth:`select_action` and :meth:`predict_action_chunk` also take LeRobot's batch dict
(docs/policy.md): ``{"observation.images.<key>" or "observation.image": (B, 3, H, W) float in [0, 1] (or uint8
(B, H, W, 3)), "observation.state": ignored (VPDD acts from video and language), "task": B strings}``, with
the instruction argument left out.

**Language.** Instructions are looked up in the embedding table stored in the checkpoint; an unseen
instruction is encoded on the fly with the checkpoint's text encoder (built lazily, and refused if its
weights differ from the ones the policy was trained with).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vpdd.models.checkpoint import KIND_POLICY, LoadedCheckpoint
from vpdd.policy.base import CheckpointPolicy, PolicyError, check_instructions

log = logging.getLogger(__name__)

__all__ = ["PolicyError", "PolicyOutput", "VPDDPolicy", "check_instructions"]


@dataclass
class PolicyOutput:
    actions: np.ndarray | None  # (B, chunk, D) float32, None for a video-only (pre-trained) model
    action_bins: np.ndarray | None  # (B, chunk * D) int64
    video_tokens: torch.Tensor  # (B, t, h, w) predicted future clip tokens
    history_tokens: torch.Tensor  # (B, t, h, w)


class VPDDPolicy(CheckpointPolicy):
    def __init__(self, loaded: LoadedCheckpoint, **kwargs: Any):
        """``kwargs``: ``execute_steps``, ``sampling_stride``, ``truncation_r``, ``seed``, ``device``."""
        super().__init__(loaded, chunk=loaded.spec.chunk, **kwargs)
        self.discretizer = loaded.discretizer
        self.action_dim = loaded.spec.action_dim
        # finetune.foresight of the run that trained it: a "masked" policy acts without foresight, as it learnt
        self.foresight = (self.config.get("train") or {}).get("foresight", "noised_truth")

    def _as_frames(self, observation: Any) -> tuple[np.ndarray | None, np.ndarray | None, bool]:
        """(frame (B, H, W, 3) or None, explicit window (B, W, H, W, 3) or None, batched)."""
        if isinstance(observation, dict):
            if "history" in observation:
                win = np.asarray(observation["history"])
                batched = win.ndim == 5
                win = win if batched else win[None]
                self._check_frames(win[:, 0], "observation['history']")
                if win.shape[1] != self.window:
                    raise PolicyError(f"observation['history']: expected a window of {self.window} frames, got "
                                      f"{win.shape[1]}")
                return None, win, batched
            if "image" not in observation:
                raise PolicyError("observation: expected a frame, {'image': frame} or {'history': window}")
            observation = observation["image"]
        frame = np.asarray(observation)
        batched = frame.ndim == 4
        frame = frame if batched else frame[None]
        self._check_frames(frame, "observation")
        return frame, None, batched

    def observe(self, observation: Any) -> None:
        """Record a frame in the history without acting (e.g. frames seen before the policy takes over)."""
        frame, win, _ = self._as_frames(observation)
        if win is not None:
            raise PolicyError("observe takes a frame ({'image': frame}), not a 'history' window")
        self._window(frame, record=True)

    def _instructions(self, instruction: str | Sequence[str], n: int) -> list[str]:
        return check_instructions(instruction, n)

    # -------------------------------------------------------------------------------------- inference
    def _predict(self, window: np.ndarray, texts: list[str], foresight: Any = None) -> PolicyOutput:
        history = self._encode_windows(window)
        n = len(texts)
        if isinstance(foresight, str) and foresight == "masked":
            video = torch.full((n, self.layout.n_video_tokens), self.layout.mask_id, device=self.device)
        elif foresight is not None:
            video = torch.as_tensor(foresight).to(self.device, torch.long).reshape(n, -1)
            if video.shape[1] != self.layout.n_video_tokens:
                raise PolicyError(f"foresight: {video.shape[1]} video tokens per sample, expected "
                                  f"{self.layout.n_video_tokens} (the grid {self.grid})")
        elif self.foresight == "masked":  # what it was trained to read
            video = torch.full((n, self.layout.n_video_tokens), self.layout.mask_id, device=self.device)
        else:
            video = None
        video_tokens, action = self._sample(history.reshape(n, -1), texts, video)
        actions = bins = None
        if self.discretizer is not None and self.model.action is not None:
            bins = self.layout.tokens_to_actions(action).cpu().numpy()
            actions = self.discretizer.decode_chunk(bins)
        return PolicyOutput(actions, bins, video_tokens.reshape(n, *self.grid), history)

    def predict(self, observation: Any, instruction: str | Sequence[str], foresight: Any = None) -> PolicyOutput:
        """One joint sample of the future clip and the action chunk (does not touch the frame history).

        ``foresight`` (the probe of ``vpdd eval video``): None, the deployed policy (the network reads the
        video tokens sampled with the actions, or all [MASK] for a policy trained with
        ``finetune.foresight=masked``); ``(B, t, h, w)`` video tokens it reads instead at every step (e.g. the
        true future); or ``"masked"``, all [MASK] (no foresight)."""
        frame, win, _ = self._as_frames(observation)
        window = win if win is not None else self._window(frame, record=False)
        return self._predict(window, self._instructions(instruction, len(window)), foresight)

    def _lerobot_batch(self, observation: Any, instruction: Any) -> tuple[Any, Any]:
        """(observation, instruction) of a LeRobot batch dict; other input passes through unchanged."""
        if not (isinstance(observation, dict) and any(str(k).startswith("observation.") for k in observation)):
            if instruction is None:
                raise PolicyError("instruction: required unless the observation is a LeRobot batch with 'task'")
            return observation, instruction
        cams = [k for k in observation if k == "observation.image" or str(k).startswith("observation.images.")]
        if len(cams) != 1:
            raise PolicyError(f"LeRobot batch: expected exactly one camera ('observation.image' or "
                              f"'observation.images.<key>'), got {cams} of keys {sorted(observation)}")
        img = observation[cams[0]]
        img = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        if img.dtype != np.uint8:  # LeRobot's convention: float (C, H, W) in [0, 1]
            if img.shape[-3] != 3:
                raise PolicyError(f"{cams[0]}: expected float images (B, 3, H, W) in [0, 1], got {img.shape}")
            img = np.moveaxis(np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8), -3, -1)
        task = observation.get("task", instruction)
        if task is None:
            raise PolicyError("LeRobot batch: no 'task' (the instruction strings) and no instruction argument")
        if not isinstance(task, str):
            task = [str(t) for t in task]
            if img.ndim == 3 and len(task) == 1:
                task = task[0]
        return {"image": np.ascontiguousarray(img)}, task

    def _require_actions(self) -> None:
        if self.discretizer is None or self.model.action is None:
            raise PolicyError(f"{self.loaded.path} is a {self.config['kind']!r} checkpoint without an action "
                              "network; fine-tune it (vpdd train finetune) to get actions")

    def predict_action_chunk(self, observation: Any, instruction: str | Sequence[str] | None = None) -> np.ndarray:
        """The predicted chunk, (chunk, D) or (B, chunk, D) float32."""
        self._require_actions()
        observation, instruction = self._lerobot_batch(observation, instruction)
        _, _, batched = self._as_frames(observation)
        out = self.predict(observation, instruction).actions
        return out if batched else out[0]

    def predict_windows(self, windows: np.ndarray, instruction: str | Sequence[str]) -> np.ndarray:
        """Chunks (B, chunk, D) float32 for frame windows (B, window, H, W, 3) uint8, as deployed (the held-out
        action probe's input; the frame history is not touched)."""
        self._require_actions()
        return self.predict({"history": np.asarray(windows)}, instruction).actions

    def predict_video(self, observation: Any, instruction: str | Sequence[str]) -> np.ndarray:
        """The predicted future clip decoded by the VQ-VAE: (W, H, W, 3) or (B, W, H, W, 3) uint8."""
        from vpdd.tokenizer.model import to_uint8

        _, _, batched = self._as_frames(observation)
        tokens = self.predict(observation, instruction).video_tokens
        with torch.no_grad():
            frames = to_uint8(self.tokenizer.decode(tokens)).cpu().numpy()
        return frames if batched else frames[0]

    def select_action(self, observation: Any, instruction: str | Sequence[str] | None = None) -> np.ndarray:
        """The next action, (D,) or (B, D) float32: from the queue, or a new chunk when it is empty."""
        self._require_actions()
        observation, instruction = self._lerobot_batch(observation, instruction)
        frame, win, batched = self._as_frames(observation)
        if win is not None:
            raise PolicyError("select_action keeps its own frame history: pass {'image': frame}, not 'history'")
        self._instructions(instruction, len(frame))  # before the frame is recorded
        window = self._window(frame, record=True)
        action = self._next_action(lambda: self._predict(window, self._instructions(instruction, len(window))).actions)
        return action if batched else action[0]

    # --------------------------------------------------------------------------------------- training
    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The diffusion training loss of a batch (never modified):

        ``history``/``target``: (B, t, h, w) or (B, N_v) video tokens (or ``history_frames``/``target_frames``:
        uint8 windows (B, W, H, W, 3) to encode); ``actions``: (B, chunk, D) continuous actions or
        ``action_bins``: (B, chunk * D) bins (neither: the pre-training dummy); ``instruction``: B strings or
        ``lang``: (B, L) embeddings; optional ``generator``. Updates the scheduler's importance-sampling
        history only in training mode."""
        def tokens(key: str) -> torch.Tensor:
            if key in batch:
                return torch.as_tensor(batch[key]).to(self.device, torch.long).reshape(len(batch[key]), -1)
            if (frames := batch.get(f"{key}_frames")) is None:
                raise PolicyError(f"batch: expected '{key}' tokens or '{key}_frames'")
            return self._encode_windows(np.asarray(frames)).reshape(len(frames), -1)

        history, target = tokens("history"), tokens("target")
        n = history.shape[0]
        bins = self._bins(batch, n)
        if bins is None and "actions" in batch:
            self._require_actions()
            a = np.asarray(batch["actions"], dtype=np.float32).reshape(n, self.chunk, self.action_dim)
            bins = torch.from_numpy(self.discretizer.encode(a).reshape(n, -1)).to(self.device)
        elif bins is None:
            bins = torch.zeros(n, self.layout.n_action_tokens, dtype=torch.long, device=self.device)
        return self._loss(batch, history, target, bins)

    @property
    def is_policy(self) -> bool:
        return self.config["kind"] == KIND_POLICY
