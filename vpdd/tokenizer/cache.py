"""The token cache: every video the later stages need, encoded once, memory-mappable.

Layout of a cache directory (``build/tokens``), written atomically by :func:`write_token_cache`::

    manifest.json            format, tokenizer (path, checkpoint hash, config), data version, window
                             convention, grid shape, and per source: items, rows
    robot/tokens.npy         (N, t, h, w) uint16   one token grid per row (t = 1 with the default window)
    robot/offsets.npy        (E + 1,) int64        rows of item e are offsets[e] : offsets[e + 1]
    robot/steps.npy          (N,) int32            the frame index s each row's window ends at
    robot/items.json         one record per item: key, task, instruction, seed, success, length, ...
    corpus/...               the same four files for the actionless corpus (records: id, caption, ...)

Window convention (algorithm.md §6): the grid of row ``r`` encodes the ``encode_window`` frames ending at
``s = steps[r]``, that is frames ``s-W+1 .. s`` with indices below 0 replaced by 0 (the first frame is
repeated at the start of a video).

* Robot episodes: one row per time step, ``s = 0 .. T-1``. Pre-training and fine-tuning take
  ``history = tokens[s]`` and ``target = tokens[min(s + 20, T - 1)]`` within an episode.
* Corpus videos: one row per ingested clip ``j`` (start frame ``c_j``), encoding the first window of the
  clip, ``s = c_j + W - 1`` (the first latent frame of the clip, as the released code keeps for human
  video). Consecutive rows are ``clip_stride`` frames apart; the paper pairs ``history = clip j - 2`` with
  ``target = clip j``.

Python API (what the pre-training dataset calls)::

    cache = TokenCache("build/tokens")
    robot = cache["robot"]                      # TokenSource; cache.sources lists what is there
    robot.tokens                                # np.memmap (N, t, h, w) uint16
    hist, tgt = robot.pair_rows(offset=20)      # row indices of every (history, target) pair
    robot.tokens[hist[i]], robot.tokens[tgt[i]]
    robot.item_of(hist)                         # item index of rows -> robot.items[e]["task"], ...
    cache["corpus"].pair_rows(offset=2)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vpdd.data.episodes import DataFormatError
from vpdd.tokenizer.data import SOURCES, VideoItem, window_indices
from vpdd.tokenizer.model import VQVAE, to_model_input
from vpdd.utils.io import atomic_directory, atomic_write_json

log = logging.getLogger(__name__)

FORMAT = "vpdd-tokens/1"
MANIFEST = "manifest.json"
TOKEN_DTYPE = np.uint16
WINDOW_CONVENTION = (
    "row r encodes frames steps[r]-W+1 .. steps[r] (W = encode_window), indices < 0 "
    "clamped to 0 (first frame repeated); robot: one row per step s = 0..T-1; corpus: one "
    "row per ingested clip j, steps = clip_starts[j] + W - 1"
)


class TokenCacheError(DataFormatError):
    """A token cache that is missing, malformed or does not match what the caller expects."""


# ------------------------------------------------------------------------------------------------------
# writing


def row_ends(item: VideoItem, window: int) -> np.ndarray:
    """The frame each row's window ends at, for one item (see the module docstring)."""
    if item.source == "robot":
        return np.arange(len(item), dtype=np.int64)
    starts = np.asarray(item.clip_starts if item.clip_starts is not None else [], dtype=np.int64)
    ends = starts + window - 1
    if (ends >= len(item)).any():
        raise TokenCacheError(
            f"corpus video {item.key!r}: a clip starting at frame "
            f"{int(starts[ends >= len(item)][0])} has fewer than {window} frames "
            f"(the video has {len(item)})"
        )
    return ends


@torch.no_grad()
def encode_windows(
    model: VQVAE,
    frames: np.ndarray,
    ends: np.ndarray,
    window: int,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Token grids (len(ends), t, h, w) for the windows of ``frames`` (T, H, W, 3) ending at ``ends``."""
    out = []
    for start in range(0, len(ends), batch_size):
        idx = window_indices(ends[start : start + batch_size], window)
        clips = torch.from_numpy(frames[idx]).to(device)
        out.append(model.encode(to_model_input(clips)).cpu().numpy().astype(TOKEN_DTYPE))
    t, h, w = model.arch.latent_shape(window)
    return np.concatenate(out) if out else np.zeros((0, t, h, w), TOKEN_DTYPE)


def _item_record(item: VideoItem, rows: int) -> dict[str, Any]:
    rec = {"key": item.key, "length": len(item), "rows": int(rows)}
    rec.update({k: v for k, v in item.meta.items() if k not in rec})
    return rec


def write_token_cache(
    out: str | Path,
    model: VQVAE,
    sources: dict[str, list[VideoItem]],
    *,
    window: int,
    batch_size: int,
    manifest: dict[str, Any],
    device: torch.device | str = "cpu",
    progress: bool = False,
    inputs: Iterable[str | Path] = (),
    force: bool = False,
) -> dict[str, Any]:
    """Encode every item of every source and write the cache directory atomically; returns the manifest."""
    from tqdm import tqdm

    model.eval()
    grid = model.arch.latent_shape(window)
    summary: dict[str, Any] = {}
    with atomic_directory(out, inputs=inputs, marker=MANIFEST, force=force) as tmp:
        for name, items in sources.items():
            if name not in SOURCES:
                raise ValueError(f"unknown token source {name!r}; expected one of {SOURCES}")
            ends = [row_ends(item, window) for item in items]
            offsets = np.concatenate([[0], np.cumsum([len(e) for e in ends])]).astype(np.int64)
            folder = tmp / name
            folder.mkdir()
            tokens = np.lib.format.open_memmap(
                folder / "tokens.npy", mode="w+", dtype=TOKEN_DTYPE, shape=(int(offsets[-1]), *grid)
            )
            for k, (item, e) in enumerate(
                tqdm(
                    list(zip(items, ends, strict=True)),
                    desc=f"encode {name}",
                    unit="video",
                    disable=not progress,
                    leave=False,
                )
            ):
                tokens[offsets[k] : offsets[k + 1]] = encode_windows(model, item.frames, e, window, batch_size, device)
            tokens.flush()
            del tokens
            np.save(folder / "offsets.npy", offsets)
            np.save(folder / "steps.npy", np.concatenate(ends).astype(np.int32) if ends else np.zeros(0, np.int32))
            atomic_write_json(
                folder / "items.json", [_item_record(i, len(e)) for i, e in zip(items, ends, strict=True)]
            )
            summary[name] = {"items": len(items), "rows": int(offsets[-1])}
            log.info("token cache: %s: %d videos, %d token grids of %s", name, len(items), int(offsets[-1]), grid)
        full = {
            **manifest,
            "format": FORMAT,
            "grid_shape": list(grid),
            "encode_window": window,
            "dtype": np.dtype(TOKEN_DTYPE).name,
            "window_convention": WINDOW_CONVENTION,
            "sources": summary,
        }
        atomic_write_json(tmp / MANIFEST, full)
    return full


# ------------------------------------------------------------------------------------------------------
# reading


@dataclass
class TokenSource:
    """One source of a token cache (``robot`` or ``corpus``); arrays are memory-mapped."""

    name: str
    tokens: np.ndarray  # (N, t, h, w) uint16, memmap
    offsets: np.ndarray  # (n_items + 1,) int64
    steps: np.ndarray  # (N,) int32
    items: list[dict[str, Any]]

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_items(self) -> int:
        return len(self.items)

    def item_rows(self, item: int) -> slice:
        return slice(int(self.offsets[item]), int(self.offsets[item + 1]))

    def item_tokens(self, item: int) -> np.ndarray:
        """All token grids of one item, (rows, t, h, w) (a view of the memmap)."""
        return self.tokens[self.item_rows(item)]

    def item_of(self, rows: np.ndarray | int) -> np.ndarray:
        """Item index of each row."""
        return np.searchsorted(self.offsets, np.asarray(rows), side="right") - 1

    def select(self, items: Iterable[int] | None = None, **match: Any) -> np.ndarray:
        """Item indices whose records match every ``key=value`` (or whose value is in a given list/set)."""
        chosen = range(self.n_items) if items is None else items
        out = []
        for i in chosen:
            rec = self.items[i]
            if all(rec.get(k) in v if isinstance(v, (list, tuple, set)) else rec.get(k) == v for k, v in match.items()):
                out.append(i)
        return np.asarray(out, dtype=np.int64)

    def pair_rows(self, offset: int, items: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Row indices ``(history, target)`` of every pair: each row of each item (all items when None)
        with the row ``offset`` rows later in the same item, clamped to the item's last row."""
        if offset < 0:
            raise ValueError(f"pair offset must be >= 0, got {offset}")
        idx = np.arange(self.n_items) if items is None else np.asarray(list(items), dtype=np.int64)
        starts, stops = self.offsets[idx], self.offsets[idx + 1]
        lengths = stops - starts
        hist = (
            np.concatenate([np.arange(a, b) for a, b in zip(starts, stops, strict=True)])
            if len(idx)
            else np.zeros(0, np.int64)
        )
        last = np.repeat(stops - 1, lengths)
        return hist.astype(np.int64), np.minimum(hist + offset, last).astype(np.int64)

    def pairs(
        self, offset: int, rng: np.random.Generator, batch_size: int, items: Iterable[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """A random batch of (history, target) token grids, each (B, t, h, w) int64."""
        hist, tgt = self.pair_rows(offset, items)
        pick = rng.integers(0, len(hist), size=batch_size)
        return self.tokens[hist[pick]].astype(np.int64), self.tokens[tgt[pick]].astype(np.int64)


class TokenCache:
    """A token cache directory (see the module docstring for the layout)."""

    def __init__(self, root: str | Path, mmap: bool = True):
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.is_file():
            raise TokenCacheError(f"{path}: missing; expected a token cache written by `vpdd tokenizer encode`")
        try:
            self.manifest: dict[str, Any] = json.loads(path.read_text())
        except ValueError as err:
            raise TokenCacheError(f"{path}: not valid JSON ({err})") from None
        if self.manifest.get("format") != FORMAT:
            raise TokenCacheError(f"{path}: format {self.manifest.get('format')!r}, expected {FORMAT!r}")
        self._sources: dict[str, TokenSource] = {}
        for name in self.manifest.get("sources", {}):
            folder = self.root / name
            try:
                tokens = np.load(folder / "tokens.npy", mmap_mode="r" if mmap else None)
                offsets = np.load(folder / "offsets.npy")
                steps = np.load(folder / "steps.npy")
                items = json.loads((folder / "items.json").read_text())
            except (OSError, ValueError) as err:
                raise TokenCacheError(f"{folder}: unreadable token source ({err})") from None
            if (
                tokens.shape[1:] != tuple(self.grid_shape)
                or len(offsets) != len(items) + 1
                or offsets[-1] != len(tokens)
                or len(steps) != len(tokens)
            ):
                raise TokenCacheError(
                    f"{folder}: inconsistent arrays (tokens {tokens.shape}, offsets "
                    f"{offsets.shape}, steps {steps.shape}, {len(items)} items)"
                )
            self._sources[name] = TokenSource(name, tokens, offsets, steps, items)

    @property
    def sources(self) -> list[str]:
        """Names of the sources present, robot first."""
        return [name for name in SOURCES if name in self._sources]

    def __getitem__(self, name: str) -> TokenSource:
        if name not in self._sources:
            raise KeyError(f"{self.root}: no {name!r} tokens; the cache holds {self.sources}")
        return self._sources[name]

    def __contains__(self, name: str) -> bool:
        return name in self._sources

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest["grid_shape"])

    @property
    def n_codes(self) -> int:
        return int(self.manifest["tokenizer"]["n_codes"])

    @property
    def tokenizer_hash(self) -> str:
        return str(self.manifest["tokenizer"]["checkpoint_hash"])

    @property
    def data_version(self) -> str | None:
        return self.manifest.get("data_version")

    def check_tokenizer(self, tokenizer_dir: str | Path) -> None:
        """Raise unless the cache was written by the tokenizer checkpoint in ``tokenizer_dir``."""
        from vpdd.runtime.checkpoint import checkpoint_hash

        got = checkpoint_hash(tokenizer_dir)
        if got != self.tokenizer_hash:
            raise TokenCacheError(
                f"{self.root}: tokens were made by tokenizer {self.tokenizer_hash[:12]}, but "
                f"{tokenizer_dir} is {got[:12]}; run `vpdd tokenizer encode` again"
            )


def load_token_cache(root: str | Path) -> TokenCache:
    return TokenCache(root)
