"""Training sequences for pre-training and fine-tuning, drawn from the token cache (algorithm.md §6).

A sequence is ``(history, target, actions, language)``:

* ``history`` = the token grid of the window ending at step s, ``target`` = the grid at min(s + 20, T - 1)
  of the same episode (``future_offset``); for corpus videos, history = clip j and target = clip j + 2
  (``corpus_pair_offset``, the released code's human-video pairing). Pairs come from
  :meth:`vpdd.tokenizer.TokenSource.pair_rows`, so the window convention is the token cache's.
* ``actions`` = the action bins of a_s .. a_{s+3} (:class:`~vpdd.models.actions.ActionDiscretizer`) in
  fine-tuning, and a constant dummy (bin 0 everywhere, as in the released code) in pre-training, where
  the scheduler's all-zero action logits make that part of the loss a constant.
* ``language`` = the instruction of a robot episode or the caption of a corpus video, as an index into
  the run's :class:`~vpdd.models.language.InstructionTable`.

**Pre-training** (:class:`PretrainData`) draws ``corpus_fraction`` of every micro-batch from corpus pairs
and the rest from robot pairs (all robot episodes, their actions ignored). **Fine-tuning**
(:class:`FinetuneData`) uses the first ``demos_per_task`` episodes of each fine-tuning task (in seed
order, as ``EpisodeStore.select``), spreads every micro-batch evenly over the tasks (the released code
stacks one sequence per task), then picks a random demonstration and step per sequence. With
``finetune.token_shift`` = s > 0 every training sequence's history and target grids move together by a
random (dy, dx) in [-s, s] tokens, the edge tokens repeated into the space they leave: the behaviour-cloning
baseline's random-shift augmentation (4 pixels there) in token units (one token is 4 x 4 pixels at the
tiny preset). The evaluation batch is never shifted.

Every batch is a pure function of ``(seed, rank, step, micro)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vpdd.data.episodes import DataFormatError
from vpdd.diffusion import TokenLayout
from vpdd.models.actions import ActionDiscretizer
from vpdd.tokenizer.cache import TokenCache, TokenSource

log = logging.getLogger(__name__)


@dataclass
class SequenceBatch:
    history: torch.Tensor  # (B, N_v) int64 video codes
    target: torch.Tensor  # (B, N_v) int64 video codes
    actions: torch.Tensor  # (B, N_a) int64 action bins in [0, K_a)
    lang_ids: torch.Tensor  # (B,) int64 rows of the instruction table

    def to(self, device: torch.device | str) -> SequenceBatch:
        return SequenceBatch(*(t.to(device) for t in (self.history, self.target, self.actions, self.lang_ids)))

    def x0(self, layout: TokenLayout) -> torch.Tensor:
        """The clean sequence [target video ; actions] in global indices, (B, N_v + N_a)."""
        return torch.cat([self.target, layout.actions_to_tokens(self.actions)], dim=1)


def _rng(seed: int, rank: int, step: int, micro: int) -> np.random.Generator:
    return np.random.default_rng([seed, rank, step, micro, 104723])


def _flat(tokens: np.ndarray, rows: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(tokens[rows].reshape(len(rows), -1).astype(np.int64))


def shift_grids(grids: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """(n, t, h, w) token grids, grid i moved by ``shifts[i]`` = (dy, dx) tokens (down / right for positive
    values), the edge tokens repeated into the rows and columns it leaves."""
    s = int(np.abs(shifts).max(initial=0))
    if s == 0:
        return grids
    h, w = grids.shape[-2:]
    if s >= min(h, w):
        raise ValueError(f"token shift {s} is not smaller than the {h} x {w} token grid")
    padded = np.pad(grids, [(0, 0), (0, 0), (s, s), (s, s)], mode="edge")
    return np.stack([padded[i, :, s - dy : s - dy + h, s - dx : s - dx + w] for i, (dy, dx) in enumerate(shifts)])


class _Pairs:
    """The (history row, target row, text) pairs of some items of one token source."""

    def __init__(self, source: TokenSource, offset: int, items: np.ndarray, text_key: str):
        self.source = source
        self.hist, self.tgt = source.pair_rows(offset, items)
        item_of = source.item_of(self.hist)
        self.texts = [str(source.items[e].get(text_key) or "") for e in item_of]
        self.item_of = item_of

    def __len__(self) -> int:
        return len(self.hist)


class _Data:
    n_action_tokens: int
    lang_ids: np.ndarray  # per pair, set by bind()

    def texts(self) -> list[str]:
        raise NotImplementedError

    def bind(self, index: dict[str, int]) -> None:
        raise NotImplementedError


class _PairsData(_Data):
    """Data of one pair set ``self.pairs`` (with per-pair ``texts``) and its batch ``_take(rows)``."""

    def texts(self) -> list[str]:
        return sorted(set(self.pairs.texts))

    def bind(self, index: dict[str, int]) -> None:
        self.ids = np.asarray([index[t] for t in self.pairs.texts], dtype=np.int64)


class _PerTaskData(_PairsData):
    """Batches spread evenly over ``self.tasks`` (each task's rows in ``self.rows_of_task``)."""

    def _spread(self, rng: np.random.Generator, n: int) -> np.ndarray:
        k = len(self.tasks)
        tasks = rng.permutation(np.tile(np.arange(k), -(-n // k)))[:n]
        return np.asarray([rng.choice(self.rows_of_task[t]) for t in tasks], dtype=np.int64)

    def batch(self, batch_size: int, seed: int, rank: int, step: int, micro: int) -> SequenceBatch:
        return self._take(self._spread(_rng(seed, rank, step, micro), batch_size))

    def eval_batch(self, n: int, seed: int) -> SequenceBatch:
        return self._take(self._spread(np.random.default_rng([seed, 99991]), n))


class PretrainData(_Data):
    """Actionless sequences: robot pairs (offset ``future_offset``) and corpus pairs (``corpus_pair_offset``)."""

    def __init__(self, cache: TokenCache, cfg, n_action_tokens: int):
        self.cfg = cfg
        self.n_action_tokens = n_action_tokens
        self.sources: dict[str, _Pairs] = {}
        if cfg.use_robot_video and "robot" in cache:
            src = cache["robot"]
            self.sources["robot"] = _Pairs(src, cfg.future_offset, np.arange(src.n_items), "instruction")
        if cfg.use_actionless and "corpus" in cache:
            src = cache["corpus"]
            self.sources["corpus"] = _Pairs(src, cfg.corpus_pair_offset, np.arange(src.n_items), "caption")
        wanted = [n for n, on in (("robot", cfg.use_robot_video), ("corpus", cfg.use_actionless)) if on]
        missing = [n for n in wanted if n not in self.sources or not len(self.sources[n])]
        if missing:
            raise DataFormatError(
                f"{cache.root}: pre-training wants {wanted} tokens but the cache has no {missing} sequences "
                f"(it holds {cache.sources}); encode them or set pretrain.use_robot_video/use_actionless"
            )

    def texts(self) -> list[str]:
        return sorted({t for p in self.sources.values() for t in p.texts})

    def bind(self, index: dict[str, int]) -> None:
        self.ids = {n: np.asarray([index[t] for t in p.texts], dtype=np.int64) for n, p in self.sources.items()}

    def counts(self, batch_size: int) -> dict[str, int]:
        if len(self.sources) == 1:
            return {next(iter(self.sources)): batch_size}
        n_corpus = int(round(self.cfg.corpus_fraction * batch_size))
        return {"robot": batch_size - n_corpus, "corpus": n_corpus}

    def _take(self, picks: dict[str, np.ndarray]) -> SequenceBatch:
        hist, tgt, ids = [], [], []
        for name, rows in picks.items():
            if not len(rows):
                continue
            p = self.sources[name]
            hist.append(_flat(p.source.tokens, p.hist[rows]))
            tgt.append(_flat(p.source.tokens, p.tgt[rows]))
            ids.append(torch.from_numpy(self.ids[name][rows]))
        history, target = torch.cat(hist), torch.cat(tgt)
        actions = torch.zeros(len(history), self.n_action_tokens, dtype=torch.long)
        return SequenceBatch(history, target, actions, torch.cat(ids))

    def batch(self, batch_size: int, seed: int, rank: int, step: int, micro: int) -> SequenceBatch:
        rng = _rng(seed, rank, step, micro)
        return self._take({n: rng.integers(0, len(self.sources[n]), k) for n, k in self.counts(batch_size).items()})

    def eval_batch(self, n: int, seed: int) -> SequenceBatch:
        """A fixed set of ``n`` sequences (robot first) for the end-of-stage sampling evaluation."""
        rng = np.random.default_rng([seed, 99991])
        return self._take({name: rng.choice(len(self.sources[name]), size=min(k, len(self.sources[name])),
                                            replace=False) for name, k in self.counts(n).items()})


class FinetuneData(_PerTaskData):
    """Action-labelled robot sequences of the fine-tuning tasks, ``demos_per_task`` episodes each."""

    def __init__(self, cache: TokenCache, robot_root: str | Path, tasks: list[str], demos_per_task: int,
                 future_offset: int, n_bins: int, chunk: int, discretizer: ActionDiscretizer | None = None,
                 token_shift: int = 0):
        from vpdd.data.episodes import EpisodeStore

        if "robot" not in cache:
            raise DataFormatError(f"{cache.root}: fine-tuning needs robot tokens; the cache holds {cache.sources}")
        src = cache["robot"]
        store = EpisodeStore(robot_root)
        entries = store.select(list(tasks), per_task=demos_per_task)
        by_key = {str(rec["key"]): e for e, rec in enumerate(src.items)}
        missing = [str(e["path"]) for e in entries if str(e["path"]) not in by_key]
        if missing:
            raise DataFormatError(
                f"{cache.root}: the token cache has no tokens for episodes {missing[:3]} of {robot_root}; "
                "rebuild it with `vpdd tokenizer encode` from the same robot data"
            )
        items = np.asarray([by_key[str(e["path"])] for e in entries], dtype=np.int64)
        actions = []
        for entry, item in zip(entries, items, strict=True):
            a = store.load(entry).actions
            if len(a) != src.items[item]["length"]:
                raise DataFormatError(
                    f"{robot_root}/{entry['path']}: {len(a)} actions but the token cache encoded "
                    f"{src.items[item]['length']} frames; rebuild the token cache"
                )
            actions.append(a)
        self.entries, self.items, self.tasks = entries, items, list(tasks)
        self.discretizer = discretizer or ActionDiscretizer.fit(np.concatenate(actions), n_bins=n_bins, chunk=chunk)
        if self.discretizer.n_bins != n_bins or self.discretizer.chunk != chunk:
            raise ValueError(
                f"action discretizer ({self.discretizer.n_bins} bins, chunk {self.discretizer.chunk}) does not "
                f"match model.actions (n_bins {n_bins}, chunk {chunk})"
            )
        self.n_action_tokens = self.discretizer.n_tokens
        self.pairs = _Pairs(src, future_offset, items, "instruction")
        # action bins of every pair (the pair's history row is step s of its episode)
        chunks = {int(e): self.discretizer.episode_chunks(a) for e, a in zip(items, actions, strict=True)}
        steps = src.steps[self.pairs.hist]
        self.action_bins = np.stack([chunks[int(e)][s] for e, s in zip(self.pairs.item_of, steps, strict=True)])
        task_of = np.asarray([self.tasks.index(src.items[e]["task"]) for e in self.pairs.item_of])
        self.rows_of_task = [np.flatnonzero(task_of == k) for k in range(len(self.tasks))]
        self.all_actions = np.concatenate(actions)
        self.token_shift = int(token_shift)
        h, w = src.tokens.shape[-2:]
        if not 0 <= self.token_shift < min(h, w):
            raise ValueError(f"finetune.token_shift={token_shift}: expected 0 <= shift < {min(h, w)} (the "
                             f"{h} x {w} token grid of {cache.root})")
        log.info("fine-tuning data: %d tasks x %d demonstrations, %d sequences", len(tasks), demos_per_task,
                 len(self.pairs))

    def _take(self, rows: np.ndarray, shifts: np.ndarray | None = None) -> SequenceBatch:
        p = self.pairs
        if shifts is None:
            hist, tgt = _flat(p.source.tokens, p.hist[rows]), _flat(p.source.tokens, p.tgt[rows])
        else:
            hist, tgt = (torch.from_numpy(shift_grids(p.source.tokens[r].astype(np.int64), shifts).reshape(len(r), -1))
                         for r in (p.hist[rows], p.tgt[rows]))
        return SequenceBatch(hist, tgt, torch.from_numpy(self.action_bins[rows]), torch.from_numpy(self.ids[rows]))

    def batch(self, batch_size: int, seed: int, rank: int, step: int, micro: int) -> SequenceBatch:
        rng = _rng(seed, rank, step, micro)
        rows = self._spread(rng, batch_size)  # drawn first: the same rows with and without the shift
        if not self.token_shift:
            return self._take(rows)
        return self._take(rows, rng.integers(-self.token_shift, self.token_shift + 1, size=(len(rows), 2)))

    def describe(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "episodes": [str(e["path"]) for e in self.entries],
                "sequences": len(self.pairs)}
