"""The behaviour-cloning samples: the fine-tuning demonstrations, the frames VPDD sees, the bins it predicts.

* **Demonstrations**: the first ``finetune.demos_per_task`` episodes of each task in ``data.robot.tasks`` in
  seed order (:meth:`~vpdd.data.episodes.EpisodeStore.select`, the selection
  :class:`~vpdd.train.datasets.FinetuneData` makes).
* **Observation** of step s: the rendered frames s-W+1 .. s (W = ``tokenizer.encode_window``), the first
  frame of the episode repeated before it (the token cache's and :class:`~vpdd.policy.VPDDPolicy`'s window).
* **Target**: the action bins of a_s .. a_{s+chunk-1} (step-major, hold-padded past the end) from an
  :class:`~vpdd.models.actions.ActionDiscretizer` fitted on all the demonstrations' actions with
  ``model.actions.n_bins``/``chunk``, as fine-tuning fits it.
* **Held out**: ``heldout_steps`` (episode, step) samples drawn with ``seed`` never enter a training batch;
  each evaluation scores them. Neighbouring steps of one demonstration look alike, so this measures fit
  on unseen windows of seen demonstrations, not generalisation to new scenes (the closed loop does that).

A training batch is spread evenly over the tasks (as fine-tuning's) and is a pure function of
``(seed, rank, step)``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from vpdd.data.episodes import DataFormatError, EpisodeStore
from vpdd.models.actions import ActionDiscretizer

log = logging.getLogger(__name__)


def window_index(step: int, window: int) -> np.ndarray:
    """Frame indices of the window ending at ``step`` (the first frame repeated before the start)."""
    return np.maximum(np.arange(step - window + 1, step + 1), 0)


class BCData:
    """All samples of the demonstrations in memory (uint8 frames; the windows are gathered per batch)."""

    def __init__(self, robot_root: str | Path, tasks: list[str], demos_per_task: int, n_bins: int, chunk: int,
                 window: int, resolution: int, heldout_steps: int = 0, seed: int = 0):
        store = EpisodeStore(robot_root)
        self.entries = store.select(list(tasks), per_task=demos_per_task)
        self.tasks, self.window, self.root = list(tasks), int(window), Path(robot_root)
        episodes = [store.load(e) for e in self.entries]
        for entry, ep in zip(self.entries, episodes, strict=True):
            if ep.frames.shape[1:3] != (resolution, resolution):
                raise DataFormatError(f"{robot_root}/{entry['path']}: frames {ep.frames.shape[1:3]}, but "
                                      f"env.resolution is {resolution}; collect the data at that resolution")
        self.instructions = []
        for task in self.tasks:
            texts = {ep.instruction for e, ep in zip(self.entries, episodes, strict=True) if e["task"] == task}
            if len(texts) != 1 or not next(iter(texts)).strip():
                raise DataFormatError(f"{robot_root}: task {task!r} needs one non-empty instruction, its episodes "
                                      f"have {sorted(texts)}")
            self.instructions.append(next(iter(texts)))
        actions = [ep.actions for ep in episodes]
        self.discretizer = ActionDiscretizer.fit(np.concatenate(actions), n_bins=n_bins, chunk=chunk)
        self.frames = np.concatenate([ep.frames for ep in episodes])  # (N, H, W, 3) all episodes back to back
        starts = np.cumsum([0] + [len(ep) for ep in episodes])[:-1]
        self.actions = np.concatenate(actions)
        bins, rows, task_of, first = [], [], [], []
        for k, (entry, ep) in enumerate(zip(self.entries, episodes, strict=True)):
            bins.append(self.discretizer.episode_chunks(ep.actions))
            rows.append(starts[k] + np.arange(len(ep)))
            first.append(np.full(len(ep), starts[k]))
            task_of.append(np.full(len(ep), self.tasks.index(entry["task"])))
        self.bins = np.concatenate(bins)  # (N, chunk * D) per sample
        self.row = np.concatenate(rows)  # the sample's frame row
        self.first = np.concatenate(first)  # its episode's first frame row
        self.task_of = np.concatenate(task_of).astype(np.int64)
        n = len(self.row)
        if heldout_steps >= n:
            raise ValueError(f"bc.heldout_steps={heldout_steps}: the demonstrations have only {n} steps")
        self.heldout = np.sort(np.random.default_rng([seed, 7727]).choice(n, size=heldout_steps, replace=False))
        train = np.setdiff1d(np.arange(n), self.heldout)
        self.rows_of_task = [train[self.task_of[train] == k] for k in range(len(self.tasks))]
        empty = [t for t, r in zip(self.tasks, self.rows_of_task, strict=True) if not len(r)]
        if empty:
            raise ValueError(f"bc.heldout_steps={heldout_steps} leaves no training step of tasks {empty}")
        log.info("bc data: %d tasks x %d demonstrations, %d steps (%d held out), %.0f MB of frames", len(tasks),
                 demos_per_task, n, heldout_steps, self.frames.nbytes / 2**20)

    def __len__(self) -> int:
        return len(self.row)

    def windows(self, samples: np.ndarray) -> np.ndarray:
        """uint8 windows (B, W, H, W, 3) of the given samples."""
        offs = np.arange(-self.window + 1, 1)
        idx = np.maximum(self.row[samples, None] + offs[None], self.first[samples, None])
        return self.frames[idx]

    def batch(self, batch_size: int, seed: int, rank: int, step: int) -> dict[str, np.ndarray]:
        """Samples spread evenly over the tasks: windows, task ids and bins."""
        rng = np.random.default_rng([seed, rank, step, 104723])
        k = len(self.tasks)
        tasks = rng.permutation(np.tile(np.arange(k), -(-batch_size // k)))[:batch_size]
        picks = np.asarray([rng.choice(self.rows_of_task[t]) for t in tasks], dtype=np.int64)
        return self.take(picks)

    def take(self, samples: np.ndarray) -> dict[str, np.ndarray]:
        return {"history_frames": self.windows(samples), "task_ids": self.task_of[samples],
                "action_bins": self.bins[samples]}

    def describe(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "episodes": [str(e["path"]) for e in self.entries], "steps": len(self),
                "heldout_steps": int(len(self.heldout))}
