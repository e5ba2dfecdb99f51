"""``BCPolicy``: the behaviour-cloning baseline behind the policy contract of :class:`~vpdd.policy.VPDDPolicy`.

::

    policy = BCPolicy.from_pretrained("models/bc")
    policy.reset(seed=0)
    action = policy.select_action({"image": frame}, "Press a button from the top.")   # (D,) float32
    chunk = policy.predict_action_chunk(frame, instruction)                            # (chunk, D)
    loss, info = policy.forward({"history_frames": ..., "actions": ..., "instruction": ...})
    policy.save_pretrained("some/dir")

Observations, the frame window (the last ``window`` frames per environment, the first frame repeated at an
episode's start), batched environments and the action queue (``execute_steps`` of each chunk) behave as in
:class:`~vpdd.policy.VPDDPolicy`. The differences: a chunk is the argmax bin of each action token (no
sampling: the actions do not depend on the seed ``reset`` takes, which is accepted for the contract), and
an instruction must be one of the fine-tuning tasks' (a learned task embedding; no text encoder).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vpdd.bc.model import KIND_BC, LINEAGE_FILE, load_bc_checkpoint, save_bc_checkpoint, to_input
from vpdd.models.actions import ActionDiscretizer
from vpdd.policy.episode import EpisodePolicy, PolicyError, check_instructions
from vpdd.runtime.checkpoint import Checkpoint, read_config


@dataclass
class BCOutput:
    actions: np.ndarray  # (B, chunk, D) float32
    action_bins: np.ndarray  # (B, chunk * D) int64
    logits: torch.Tensor  # (B, chunk * D, n_bins)


@dataclass
class LoadedBC:
    """What evaluation reads of a loaded checkpoint (the fields it reads of a VPDD ``LoadedCheckpoint``)."""

    path: Path
    checkpoint: Checkpoint


class BCPolicy(EpisodePolicy):
    def __init__(self, checkpoint: Checkpoint, net: nn.Module, *, execute_steps: int = 1, seed: int = 0,
                 device: str | torch.device = "cpu"):
        spec = net.spec
        super().__init__(chunk=spec.chunk, execute_steps=execute_steps, window=spec.window,
                         resolution=spec.resolution, seed=seed, device=device)
        self.loaded = LoadedBC(checkpoint.path, checkpoint)
        self.path, self.config = checkpoint.path, copy.deepcopy(checkpoint.config)
        self.net = net
        self.action_dim = spec.action_dim
        self.discretizer = ActionDiscretizer.from_dict(self.config["actions"])
        self.instructions = list(self.config["instructions"])
        self.eval()

    # ------------------------------------------------------------------------------ loading/saving
    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", **kwargs: Any) -> BCPolicy:
        """Load a ``vpdd-bc`` checkpoint directory; keyword arguments: ``execute_steps``, ``seed``."""
        kind = read_config(path).get("kind")
        if kind != KIND_BC:
            raise PolicyError(f"{path}: a {kind!r} checkpoint, not a behaviour-cloning policy ({KIND_BC!r}); load "
                              "it with VPDDPolicy, or train a BC policy with `vpdd train bc`")
        ckpt, net = load_bc_checkpoint(path, device=device)
        return cls(ckpt, net, device=device, **kwargs)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the policy as a checkpoint directory (config, weights, lineage; no training state)."""
        src = self.loaded.checkpoint
        meta = {"step": src.step, "metrics": src.meta.get("metrics", {}), "saved_from": str(src.path),
                "source_checkpoint_hash": src.meta.get("checkpoint_hash")}
        lineage_file = Path(src.path) / LINEAGE_FILE
        lineage = json.loads(lineage_file.read_text()) if lineage_file.is_file() else None
        return save_bc_checkpoint(path, config=self.config, weights=self.net.state_dict(), meta=meta,
                                  lineage=lineage)

    @property
    def is_policy(self) -> bool:
        return True

    # ------------------------------------------------------------------------------------ observations
    def _as_frames(self, observation: Any) -> tuple[np.ndarray, bool]:
        if isinstance(observation, dict):
            if "image" not in observation:
                raise PolicyError("observation: expected a frame or {'image': frame}")
            observation = observation["image"]
        frame = np.asarray(observation)
        batched = frame.ndim == 4
        frame = frame if batched else frame[None]
        self._check_frames(frame, "observation")
        return frame, batched

    def observe(self, observation: Any) -> None:
        """Record a frame in the history without acting (e.g. frames seen before the policy takes over)."""
        frame, _ = self._as_frames(observation)
        self._window(frame, record=True)

    def task_ids(self, instruction: str | Sequence[str], n: int) -> np.ndarray:
        """Rows of the task table for ``n`` instructions; one the policy was not trained on is refused."""
        texts = check_instructions(instruction, n)
        unknown = sorted({t for t in texts if t not in self.instructions})
        if unknown:
            raise PolicyError(f"instruction {unknown[0]!r:.80}: the behaviour-cloning policy {self.path} knows only "
                              f"its fine-tuning tasks' instructions {self.instructions}")
        return np.asarray([self.instructions.index(t) for t in texts], dtype=np.int64)

    # -------------------------------------------------------------------------------------- inference
    @torch.no_grad()
    def _predict(self, window: np.ndarray, task_ids: np.ndarray) -> BCOutput:
        was_training = self.net.training
        self.net.eval()
        try:
            x = to_input(torch.from_numpy(np.ascontiguousarray(window)).to(self.device))
            logits = self.net(x, torch.from_numpy(task_ids).to(self.device))
        finally:
            self.net.train(was_training)
        bins = logits.argmax(-1).cpu().numpy()
        return BCOutput(self.discretizer.decode_chunk(bins), bins, logits)

    def predict_action_chunk(self, observation: Any, instruction: str | Sequence[str]) -> np.ndarray:
        """The predicted chunk, (chunk, D) or (B, chunk, D) float32 (does not record the frame)."""
        frame, batched = self._as_frames(observation)
        ids = self.task_ids(instruction, len(frame))
        out = self._predict(self._window(frame, record=False), ids).actions
        return out if batched else out[0]

    def predict_windows(self, windows: np.ndarray, instruction: str | Sequence[str]) -> np.ndarray:
        """Chunks (B, chunk, D) float32 for frame windows (B, window, H, W, 3) uint8 (the held-out action
        probe's input; the frame history is not touched)."""
        windows = np.asarray(windows)
        if windows.ndim != 5 or windows.shape[1] != self.window:
            raise PolicyError(f"windows: expected uint8 (B, {self.window}, H, W, 3), got {windows.dtype} "
                              f"{windows.shape}")
        self._check_frames(windows.reshape(-1, *windows.shape[2:]), "windows")
        return self._predict(windows, self.task_ids(instruction, len(windows))).actions

    def select_action(self, observation: Any, instruction: str | Sequence[str]) -> np.ndarray:
        """The next action, (D,) or (B, D) float32: from the queue, or a new chunk when it is empty."""
        frame, batched = self._as_frames(observation)
        ids = self.task_ids(instruction, len(frame))  # before the frame is recorded
        window = self._window(frame, record=True)
        action = self._next_action(lambda: self._predict(window, ids).actions)
        return action if batched else action[0]

    # --------------------------------------------------------------------------------------- training
    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The cross-entropy of a batch (never modified): ``history_frames`` uint8 windows (B, W, H, W, 3)
        (already augmented, if at all); ``action_bins`` (B, chunk * D) or ``actions`` (B, chunk, D);
        ``task_ids`` (B,) or ``instruction`` (B strings). ``info``: ``action_bin_acc`` (argmax vs target)."""
        if "history_frames" not in batch:
            raise PolicyError("batch: expected 'history_frames' (uint8 windows (B, W, H, W, 3))")
        frames = torch.as_tensor(np.asarray(batch["history_frames"])).to(self.device)
        if frames.ndim != 5 or frames.shape[1] != self.window or frames.dtype != torch.uint8:
            raise PolicyError(f"batch['history_frames']: expected uint8 (B, {self.window}, H, W, 3), got "
                              f"{frames.dtype} {tuple(frames.shape)}")
        n = frames.shape[0]
        if "action_bins" in batch:
            bins = torch.as_tensor(batch["action_bins"]).to(self.device, torch.long).reshape(n, -1)
        elif "actions" in batch:
            a = np.asarray(batch["actions"], dtype=np.float32).reshape(n, self.chunk, self.action_dim)
            bins = torch.from_numpy(self.discretizer.encode(a).reshape(n, -1)).to(self.device)
        else:
            raise PolicyError("batch: expected 'action_bins' or 'actions'")
        ids = (np.asarray(batch["task_ids"], dtype=np.int64) if "task_ids" in batch
               else self.task_ids(batch.get("instruction", ""), n))
        return bc_loss(self.net, to_input(frames), torch.from_numpy(ids).to(self.device), bins)


def bc_loss(net: nn.Module, x: torch.Tensor, task_ids: torch.Tensor,
            bins: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean cross-entropy over the action tokens, and the argmax accuracy."""
    logits = net(x, task_ids)
    loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), bins.reshape(-1))
    return loss, {"action_bin_acc": (logits.detach().argmax(-1) == bins).float().mean()}
