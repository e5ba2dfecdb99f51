"""Robot episodes on disk, and the loader API every later stage uses.

Format (one episode = one file ``<root>/<benchmark>/<task>/episode_<seed>.npz``, written by
:func:`save_episode` with fixed zip timestamps so equal data gives equal bytes):

=============  ====================  ======================================================
member         shape / dtype         meaning
=============  ====================  ======================================================
frames.npy     (T, H, W, 3) uint8    the camera image observed *before* action t (upright)
actions.npy    (T, A) float32        the action taken at step t (Meta-World: dx, dy, dz, grip)
states.npy     (T, S) float32        the proprioceptive/object state at step t (Meta-World: 39-d)
success.npy    (T,) bool             the environment's success flag after action t
meta.json      utf-8 JSON            task, instruction, seed, success, camera, resolution, ...
=============  ====================  ======================================================

An ``index.json`` beside the task folders lists every episode with its metadata, so datasets can be
built without opening every file.

An **actionless** store (index format ``vpdd-actionless-episodes/1``, written by ``vpdd data render-task-video``)
holds the same kind of camera video without any action, state or success array: each file has only
``frames.npy`` and ``meta.json``. :meth:`EpisodeStore.load_frames` reads both kinds; :meth:`EpisodeStore.load`
refuses an actionless store, so nothing can train an action network on it by mistake.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vpdd.data.npz import save_npz
from vpdd.utils.io import atomic_write_json

INDEX_NAME = "index.json"
REQUIRED = ("frames", "actions", "states", "success")
FORMAT = "vpdd-episodes/1"
ACTIONLESS_FORMAT = "vpdd-actionless-episodes/1"


class DataFormatError(ValueError):
    """A data file or folder that does not have the expected format; the message names it."""


@dataclass
class Episode:
    frames: np.ndarray
    actions: np.ndarray
    states: np.ndarray
    success: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @property
    def task(self) -> str:
        return str(self.meta.get("task", ""))

    @property
    def instruction(self) -> str:
        return str(self.meta.get("instruction", ""))

    def validate(self, source: str = "episode") -> None:
        f, a, s, ok = self.frames, self.actions, self.states, self.success
        if f.ndim != 4 or f.shape[-1] != 3 or f.dtype != np.uint8:
            raise DataFormatError(f"{source}: frames must be (T, H, W, 3) uint8, got {f.shape} {f.dtype}")
        n = f.shape[0]
        if n == 0:
            raise DataFormatError(f"{source}: an episode needs at least one step, got 0 frames")
        for name, arr, ndim in (("actions", a, 2), ("states", s, 2), ("success", ok, 1)):
            if arr.ndim != ndim or arr.shape[0] != n:
                raise DataFormatError(
                    f"{source}: {name} must have {ndim} dims and {n} rows (one per frame), got {arr.shape}"
                )


def save_episode(path: str | Path, episode: Episode) -> Path:
    """Write one episode atomically in the documented format."""
    arrays = {
        "frames": episode.frames.astype(np.uint8, copy=False),
        "actions": episode.actions.astype(np.float32, copy=False),
        "states": episode.states.astype(np.float32, copy=False),
        "success": episode.success.astype(bool, copy=False),
    }
    meta = json.dumps(episode.meta, sort_keys=True).encode()
    return save_npz(path, arrays, {"meta.json": meta})


def save_frames_only(path: str | Path, frames: np.ndarray, meta: dict[str, Any]) -> Path:
    """Write one actionless episode (frames and metadata, nothing else) atomically."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise DataFormatError(f"{path}: frames must be (T>0, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    return save_npz(path, {"frames": frames}, {"meta.json": json.dumps(meta, sort_keys=True).encode()})


def load_frames(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """The frames and metadata of an episode file of either kind (with or without actions)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "frames.npy" not in npz.zip.namelist():
                raise DataFormatError(f"{path}: not an episode file, no frames member")
            frames = npz["frames"]
            meta = json.loads(npz.zip.read("meta.json")) if "meta.json" in npz.zip.namelist() else {}
    except FileNotFoundError:
        raise DataFormatError(f"{path}: no such episode file") from None
    except DataFormatError:
        raise
    except Exception as err:
        raise DataFormatError(f"{path}: unreadable episode file ({type(err).__name__}: {err})") from None
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise DataFormatError(f"{path}: frames must be (T>0, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    return frames, meta


def load_episode(path: str | Path) -> Episode:
    """Read one episode; a clear error names the file when it is missing, truncated or malformed."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in REQUIRED if f"{k}.npy" not in npz.zip.namelist()]
            if missing:
                raise DataFormatError(f"{path}: not an episode file, missing members {missing}")
            arrays = {k: npz[k] for k in REQUIRED}
            meta = json.loads(npz.zip.read("meta.json")) if "meta.json" in npz.zip.namelist() else {}
    except FileNotFoundError:
        raise DataFormatError(f"{path}: no such episode file") from None
    except DataFormatError:
        raise
    except Exception as err:  # zipfile.BadZipFile, ValueError from a truncated member, ...
        raise DataFormatError(f"{path}: unreadable episode file ({type(err).__name__}: {err})") from None
    try:
        return Episode(meta=meta, **arrays)
    except DataFormatError as err:
        raise DataFormatError(str(err).replace("episode:", f"{path}:", 1)) from None


def write_index(root: str | Path, entries: list[dict[str, Any]], actionless: bool = False,
                extra: dict[str, Any] | None = None) -> Path:
    """Write ``index.json`` for a benchmark folder: one entry per episode, paths relative to ``root``."""
    entries = sorted(entries, key=lambda e: (e["task"], e["path"]))
    doc = {"format": ACTIONLESS_FORMAT if actionless else FORMAT, **(extra or {}), "episodes": entries}
    return atomic_write_json(Path(root) / INDEX_NAME, doc)


class EpisodeStore:
    """The robot episodes under ``root`` (for example ``data/metaworld``), read through ``index.json``.

    ``allow_empty``: an index listing no episodes is accepted (an actionless set rendered with
    ``episodes_per_task: 0``)."""

    def __init__(self, root: str | Path, allow_empty: bool = False):
        self.root = Path(root)
        index = self.root / INDEX_NAME
        if not self.root.is_dir():
            raise DataFormatError(f"{self.root}: no such data folder (run `vpdd data fetch` or collect data)")
        if not index.is_file():
            raise DataFormatError(f"{index}: missing episode index; expected a folder written by collect-metaworld")
        try:
            data = json.loads(index.read_text())
            self.entries: list[dict[str, Any]] = list(data["episodes"])
            self.format = str(data.get("format", FORMAT))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataFormatError(f"{index}: malformed episode index ({err})") from None
        if self.format not in (FORMAT, ACTIONLESS_FORMAT):
            raise DataFormatError(f"{index}: format {self.format!r}, expected {FORMAT!r} or {ACTIONLESS_FORMAT!r}")
        self.actionless = self.format == ACTIONLESS_FORMAT
        if not self.entries and not allow_empty:
            raise DataFormatError(f"{index}: the index lists no episodes")

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def tasks(self) -> list[str]:
        return sorted({e["task"] for e in self.entries})

    def select(self, tasks: list[str] | None = None, per_task: int | None = None) -> list[dict[str, Any]]:
        """Index entries for ``tasks`` (all when None), the first ``per_task`` of each in seed order."""
        chosen: list[dict[str, Any]] = []
        wanted = tasks if tasks is not None else self.tasks
        missing = sorted(set(wanted) - set(self.tasks))
        if missing:
            raise DataFormatError(f"{self.root}: no episodes for tasks {missing}; the data holds {self.tasks}")
        for task in wanted:
            rows = sorted((e for e in self.entries if e["task"] == task), key=lambda e: e["seed"])
            if per_task is not None:
                if len(rows) < per_task:
                    raise DataFormatError(
                        f"{self.root}: task {task!r} has {len(rows)} episodes, {per_task} were asked for"
                    )
                rows = rows[:per_task]
            chosen.extend(rows)
        return chosen

    def load(self, entry: dict[str, Any]) -> Episode:
        if self.actionless:
            raise DataFormatError(f"{self.root}: an actionless video set ({ACTIONLESS_FORMAT}) holds no actions; "
                                  "it can feed the tokenizer and pre-training, not fine-tuning or BC")
        return load_episode(self.root / entry["path"])

    def load_frames(self, entry: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        """Frames and metadata of one episode, for either kind of store."""
        return load_frames(self.root / entry["path"])

    def __iter__(self) -> Iterator[Episode]:
        for entry in self.entries:
            yield self.load(entry)
