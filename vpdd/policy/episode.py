"""What every policy keeps during an episode, whatever network acts: the frame window, the action queue, the
generator, and the checks of what a caller passes in.

:class:`EpisodePolicy` is the base of :class:`~vpdd.policy.VPDDPolicy` and
:class:`~vpdd.rlbench.policy.RLBenchPolicy` (through :class:`~vpdd.policy.base.CheckpointPolicy`) and of the
behaviour-cloning :class:`~vpdd.bc.policy.BCPolicy`. It imports no model code, so the baseline does not
depend on VPDD's networks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn


class PolicyError(ValueError):
    """Bad input to the policy (names what was expected)."""


# Longest instruction accepted (characters): the text encoders truncate far below this, so a longer one is
# a mistake (a file's content, a prompt injection), not a task description.
MAX_INSTRUCTION_CHARS = 1000


def check_instructions(instruction: Any, n: int) -> list[str]:
    """``instruction`` (one string for the batch, or one per observation) as ``n`` validated strings:
    non-empty text of at most :data:`MAX_INSTRUCTION_CHARS` characters; anything else is a PolicyError."""
    if n <= 0:
        raise PolicyError(f"an empty batch ({n} observations): pass at least one frame")
    if isinstance(instruction, str):
        texts = [instruction] * n
    elif isinstance(instruction, list | tuple):
        texts = list(instruction)
    else:
        raise PolicyError(f"instruction: expected a string or a list of {n} strings, got "
                          f"{type(instruction).__name__} {instruction!r:.60}")
    if len(texts) != n:
        raise PolicyError(f"{len(texts)} instructions for a batch of {n} observations")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise PolicyError(f"instruction {i}: expected a string, got {type(text).__name__} {text!r:.60}")
        if not text.strip():
            raise PolicyError(f"instruction {i}: empty; describe the task (e.g. the one the policy was trained on)")
        if len(text) > MAX_INSTRUCTION_CHARS:
            raise PolicyError(f"instruction {i}: {len(text)} characters, more than the limit of "
                              f"{MAX_INSTRUCTION_CHARS}")
    return texts


def check_frames(frames: np.ndarray, resolution: int, what: str) -> None:
    """``frames`` must be a non-empty uint8 batch (B, resolution, resolution, 3)."""
    r = resolution
    if frames.ndim >= 1 and frames.shape[0] == 0:
        raise PolicyError(f"{what}: an empty batch (0 frames); pass at least one frame")
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (r, r, 3):
        raise PolicyError(f"{what}: expected uint8 frames ({r}, {r}, 3) (optionally batched), got "
                          f"{frames.dtype} {frames.shape[1:] if frames.ndim == 4 else frames.shape}")


class FrameWindow:
    """The last ``size`` frames of each of B streams (environments, or an RLBench policy's cameras).

    A window ends at the current frame; at an episode's start its first frame is repeated until ``size``
    frames have been seen (the token cache's convention)."""

    def __init__(self, size: int):
        self.size = int(size)
        self._frames: deque[np.ndarray] = deque(maxlen=self.size)
        self.streams: int | None = None

    def __len__(self) -> int:
        """Frames recorded (at most ``size``)."""
        return len(self._frames)

    def window(self, frame: np.ndarray, record: bool) -> np.ndarray:
        """The window ending at ``frame`` (B, H, W, 3): (B, size, H, W, 3); ``record`` keeps the frame."""
        if self.streams is not None and frame.shape[0] != self.streams:
            raise PolicyError(f"observation batch of {frame.shape[0]}, but this episode has {self.streams} "
                              "environments; call reset() between episodes")
        frames = [*self._frames, frame][-self.size:]
        if record:
            self._frames.append(frame)
            self.streams = frame.shape[0]
        frames = [frames[0]] * (self.size - len(frames)) + frames
        return np.stack(frames, axis=1)


class EpisodePolicy(nn.Module):
    """Chunked acting: ``select_action`` executes ``execute_steps`` of each predicted ``chunk`` from a queue.

    ``reset(seed)`` starts new episode(s): the frame window and the queue are emptied and the generator is
    reseeded (a policy that does not sample keeps it for the contract)."""

    def __init__(self, *, chunk: int, execute_steps: int, window: int, resolution: int, seed: int = 0,
                 device: str | torch.device = "cpu"):
        super().__init__()
        self.chunk, self.window, self.resolution = int(chunk), int(window), int(resolution)
        if not 1 <= execute_steps <= self.chunk:
            raise PolicyError(f"execute_steps={execute_steps}: expected 1..{self.chunk} (the chunk length)")
        self.execute_steps = int(execute_steps)
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self._queue: deque[np.ndarray] = deque()
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        """Start new episode(s): forget the frame history and the queued actions; reseed if ``seed``."""
        self._history = FrameWindow(self.window)
        self._queue.clear()
        if seed is not None:
            self.generator.manual_seed(int(seed))

    @property
    def queued_actions(self) -> int:
        """Actions left from the last predicted chunk; 0 means the next ``select_action`` predicts."""
        return len(self._queue)

    def _window(self, frame: np.ndarray, record: bool) -> np.ndarray:
        """The frame window ending at ``frame`` (B, H, W, 3): (B, W, H, W, 3); ``record`` keeps the frame."""
        return self._history.window(frame, record)

    def _check_frames(self, frames: np.ndarray, what: str) -> None:
        check_frames(frames, self.resolution, what)

    def _next_action(self, predict_chunk: Callable[[], np.ndarray], time_axis: int = 1) -> np.ndarray:
        """The queue's next action; when it is empty, ``predict_chunk()`` refills it with the first
        ``execute_steps`` actions along ``time_axis`` (1 for batched chunks (B, chunk, D))."""
        if not self._queue:
            chunk = predict_chunk()
            self._queue.extend(np.take(chunk, k, axis=time_axis) for k in range(self.execute_steps))
        return self._queue.popleft()
