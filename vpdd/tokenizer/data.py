"""Video clips for the tokenizer: robot episodes (demonstrations and the actionless task video, both source
``robot``) and the actionless corpus, one pool, one convention.

Both sources become :class:`VideoItem` (all frames of one episode or one corpus video, uint8
``(T, H, W, 3)``). A window of ``L`` frames *ending* at step ``s`` is frames ``s-L+1 .. s``; indices before
the start of the video repeat frame 0 (:func:`window_indices`). Training samples windows with ``s`` uniform
over the whole video, so the network also sees the padded windows it will meet at episode starts when the
token cache is built. Windows never straddle two episodes (unlike the released code, algorithm.md §2.4).

Held-out items (whole episodes / videos, chosen by a seeded hash of their key) never enter training; they
give the PSNR/SSIM/usage numbers. Batches are a pure function of ``(seed, rank, step)``, so a resumed run
sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vpdd.data.episodes import DataFormatError

log = logging.getLogger(__name__)

SOURCES = ("robot", "corpus")


@dataclass
class VideoItem:
    source: str  # "robot" | "corpus"
    key: str  # robot: the episode path in the index; corpus: the video id
    frames: np.ndarray  # (T, H, W, 3) uint8
    meta: dict[str, Any] = field(default_factory=dict)
    clip_starts: np.ndarray | None = None  # corpus only: start frame of each ingested clip

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def window_indices(ends: np.ndarray | int, length: int) -> np.ndarray:
    """Frame indices of the windows of ``length`` frames ending at ``ends`` (first frame repeated)."""
    ends = np.asarray(ends, dtype=np.int64)
    return np.maximum(ends[..., None] - (length - 1) + np.arange(length), 0)


def load_robot_items(root: str | Path, tasks: list[str] | None = None, allow_empty: bool = False) -> list[VideoItem]:
    """Every episode under ``root`` (``index.json`` written by the collector), frames in memory. An actionless
    store (the task video of ``vpdd data render-task-video``) gives the same items, marked ``actionless``:
    it is robot-camera video of the same tasks, so it shares the ``robot`` source (one token row per step)."""
    from vpdd.data.episodes import EpisodeStore

    store = EpisodeStore(root, allow_empty=allow_empty)
    items = []
    for entry in store.select(tasks) if store.entries else []:
        frames, ep_meta = store.load_frames(entry)
        meta = {k: v for k, v in entry.items() if isinstance(v, (str, int, float, bool)) or v is None}
        meta.setdefault("instruction", str(ep_meta.get("instruction", "")))
        if store.actionless:
            meta["actionless"] = True
        items.append(VideoItem("robot", str(entry["path"]), frames, meta))
    return items


def load_task_video_items(root: str | Path) -> list[VideoItem]:
    """The actionless task video under ``root`` (possibly none); refuses a store that holds actions."""
    from vpdd.data.episodes import ACTIONLESS_FORMAT, EpisodeStore

    store = EpisodeStore(root, allow_empty=True)
    if not store.actionless:
        raise DataFormatError(f"{root}: expected actionless task video ({ACTIONLESS_FORMAT}, written by `vpdd data "
                              f"render-task-video`), got {store.format!r}")
    return load_robot_items(root, allow_empty=True)


def merge_robot_items(robot: list[VideoItem], task_video: list[VideoItem], root: str | Path) -> list[VideoItem]:
    """Demonstrations then task video, refusing a key both hold (the token cache finds episodes by key)."""
    clash = sorted({i.key for i in robot} & {i.key for i in task_video})
    if clash:
        raise DataFormatError(f"{root}: task video keys {clash[:3]} are also demonstration keys")
    return robot + task_video


def open_corpus(root: str | Path):
    from vpdd.data.corpus import CorpusStore

    return CorpusStore(root)


def load_corpus_items(root: str | Path) -> tuple[list[VideoItem], int]:
    """Every video of an ingested corpus, and the corpus clip length."""
    store = open_corpus(root)
    items = []
    for entry in store.entries:
        rec = store.load(entry)
        meta = {k: v for k, v in entry.items() if isinstance(v, (str, int, float, bool)) or v is None}
        meta["caption"] = rec.caption
        items.append(
            VideoItem(
                "corpus",
                str(entry["id"]),
                rec.frames,
                meta,
                clip_starts=np.asarray(rec.clip_starts, dtype=np.int64),
            )
        )
    return items, int(store.clip_length)


def check_resolution(items: list[VideoItem], resolution: int, what: str, root: str | Path) -> None:
    """A clear error when the data's frame size is not the tokenizer's."""
    for item in items:
        h, w = item.frames.shape[1:3]
        if (h, w) != (resolution, resolution):
            raise DataFormatError(
                f"resolution mismatch: the tokenizer ({what}) works on {resolution}x{resolution} frames, "
                f"but {root} holds {h}x{w} frames (first: {item.source} {item.key!r})"
            )


def load_items(robot: str | Path | None, corpus: str | Path | None,
               task_video: str | Path | None = None) -> list[VideoItem]:
    items: list[VideoItem] = []
    if robot is not None:
        items += load_robot_items(robot)
    if task_video is not None:
        items = merge_robot_items(items, load_task_video_items(task_video), task_video)
    if corpus is not None:
        items += load_corpus_items(corpus)[0]
    if not items:
        raise DataFormatError("no training videos: pass a robot episode folder and/or an ingested corpus")
    return items


def _rank_key(seed: int, key: str) -> str:
    return hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()


def split_heldout(items: list[VideoItem], fraction: float, seed: int) -> tuple[list[VideoItem], list[VideoItem]]:
    """Hold out ``fraction`` of each source's items (at least one when a source has two or more)."""
    train, heldout = [], []
    for source in SOURCES:
        group = sorted((i for i in items if i.source == source), key=lambda i: _rank_key(seed, i.key))
        n_out = round(fraction * len(group))
        if fraction > 0 and len(group) >= 2:
            n_out = max(n_out, 1)
        heldout += group[:n_out]
        train += group[n_out:]
    return train, heldout


class ClipSampler:
    """Random training windows: a ``corpus_fraction`` share of each batch from corpus videos."""

    def __init__(self, items: list[VideoItem], clip_length: int, corpus_fraction: float, seed: int):
        if not items:
            raise DataFormatError("no training videos left after holding out the evaluation set")
        self.clip_length, self.seed = clip_length, seed
        self.by_source = {s: [i for i in items if i.source == s] for s in SOURCES}
        self.by_source = {s: v for s, v in self.by_source.items() if v}
        # items are drawn in proportion to their length within a source
        self.weights = {
            s: np.array([len(i) for i in v], float) / sum(len(i) for i in v) for s, v in self.by_source.items()
        }
        if len(self.by_source) == 2:
            self.corpus_fraction = corpus_fraction
        else:
            self.corpus_fraction = 1.0 if "corpus" in self.by_source else 0.0

    def sample(self, step: int, batch_size: int, rank: int = 0) -> np.ndarray:
        """uint8 clips (B, L, H, W, 3) for this step (deterministic in seed, rank, step)."""
        rng = np.random.default_rng([self.seed, rank, step])
        n_corpus = int(rng.binomial(batch_size, self.corpus_fraction))
        clips = []
        for source, n in (("corpus", n_corpus), ("robot", batch_size - n_corpus)):
            if n == 0:
                continue
            pool = self.by_source[source]
            picks = rng.choice(len(pool), size=n, p=self.weights[source])
            for p in picks:
                item = pool[p]
                end = int(rng.integers(0, len(item)))
                clips.append(item.frames[window_indices(end, self.clip_length)])
        return np.stack(clips)


def eval_clips(items: list[VideoItem], n: int, clip_length: int, seed: int) -> np.ndarray:
    """A fixed set of ``n`` held-out windows (alternating sources when both exist)."""
    if not items:
        raise DataFormatError("no held-out videos (heldout_fraction is 0 or the data holds a single video)")
    rng = np.random.default_rng([seed, 7919])
    groups = [[i for i in items if i.source == s] for s in SOURCES]
    groups = [g for g in groups if g]
    clips = []
    for k in range(n):
        group = groups[k % len(groups)]
        item = group[int(rng.integers(0, len(group)))]
        end = int(rng.integers(0, len(item)))
        clips.append(item.frames[window_indices(end, clip_length)])
    return np.stack(clips)
