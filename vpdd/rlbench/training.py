"""RLBench training sequences (multi-view video, keyframe actions) and the RLBench stages of the one loop.

A sequence holds the token grids of **all cameras** (``rlbench.cameras``, in that order) for the history
(the window ending at step s) and for the target (the window at min(s + future_offset, T - 1)), so the
video network predicts every view of the future in one sequence: N_v = views x grid tokens. The grids
come from the multi-view token cache (:mod:`vpdd.rlbench.tokens`).

* :class:`MultiViewPretrainData` (pre-training): every step of every episode in the cache, actions the
  constant dummy of pre-training (the scheduler's zero action logits make that loss part constant).
* :class:`KeyframeFinetuneData` (fine-tuning): the first ``demos_per_task`` episodes (by episode number)
  of each task in ``rlbench.tasks``; keyframes from their ``low_dim_obs.pkl`` (read again from the PerAct
  data, :func:`~vpdd.rlbench.keyframes.discover_keyframes`), the action of step s = the poses of the next
  ``chunk`` keyframes, coded by a :class:`~vpdd.rlbench.keyframes.PoseActionCoder` fitted on all gripper
  poses of those episodes (saved in the policy checkpoint). Batches spread evenly over tasks.

:func:`train_rlbench_stage` runs :func:`vpdd.train.loop.train_stage` with these sources (its
:class:`~vpdd.train.loop.StageHooks`), the multi-view action network (``rlbench.foresight``), and the
RLBench view of the config (:func:`rlbench_config`: stage settings from ``rlbench.pretrain`` /
``rlbench.finetune``, action space K_a = ``translation_bins``, chunk x 7 tokens).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vpdd.data.episodes import DataFormatError
from vpdd.rlbench import network as _network  # noqa: F401  (registers the "multiview" action network)
from vpdd.rlbench.keyframes import PoseActionCoder, discover_keyframes, keyframe_targets
from vpdd.tokenizer.cache import TokenCache, TokenSource
from vpdd.train.datasets import SequenceBatch, _flat, _PairsData, _PerTaskData, _rng

log = logging.getLogger(__name__)

POSE_DIMS = 7
PARAM_KEYS = {
    "pretrain": ["model.video", "model.language", "diffusion", "rlbench"],
    "finetune": ["model.video", "model.action", "model.language", "diffusion", "rlbench"],
}


class MultiViewPairs:
    """(history, target) token rows of every step of the chosen episodes, one column per camera."""

    def __init__(self, source: TokenSource, cameras: list[str], offset: int, episodes: list[str] | None = None,
                 where: str = "token cache"):
        if offset < 0:
            raise ValueError(f"future_offset must be >= 0, got {offset}")
        by_episode: dict[str, dict[str, int]] = {}
        for e, rec in enumerate(source.items):
            if rec.get("episode") is None or rec.get("view") is None:
                raise DataFormatError(f"{where}: item {rec.get('key')!r} has no episode/view record: not a "
                                      "multi-view cache (build it with `vpdd rlbench tokenize`)")
            by_episode.setdefault(str(rec["episode"]), {})[str(rec["view"])] = e
        chosen = list(episodes) if episodes is not None else sorted(by_episode)
        hist, tgt, ep_of, steps = [], [], [], []
        self.records: list[dict[str, Any]] = []
        for k, ep in enumerate(chosen):
            views = by_episode.get(ep)
            if views is None:
                raise DataFormatError(f"{where}: no tokens for episode {ep}; rebuild it from the same data")
            missing = [c for c in cameras if c not in views]
            if missing:
                raise DataFormatError(f"{where}: episode {ep} has no tokens for cameras {missing} (it has "
                                      f"{sorted(views)}); tokenize with the cameras of rlbench.cameras")
            items = [views[c] for c in cameras]
            lengths = {int(source.offsets[i + 1] - source.offsets[i]) for i in items}
            if len(lengths) != 1:
                raise DataFormatError(f"{where}: the cameras of episode {ep} have different lengths {sorted(lengths)}")
            n = lengths.pop()
            s = np.arange(n)
            starts = source.offsets[items][None, :]
            hist.append(starts + s[:, None])
            tgt.append(starts + np.minimum(s + offset, n - 1)[:, None])
            ep_of.append(np.full(n, k))
            steps.append(s)
            self.records.append(source.items[items[0]])
        self.source, self.episodes, self.cameras = source, chosen, list(cameras)
        self.hist = np.concatenate(hist).astype(np.int64)  # (P, V)
        self.tgt = np.concatenate(tgt).astype(np.int64)
        self.episode = np.concatenate(ep_of).astype(np.int64)  # (P,) index into self.episodes
        self.step = np.concatenate(steps).astype(np.int64)
        self.texts = [str(self.records[e].get("instruction") or "") for e in self.episode]

    def __len__(self) -> int:
        return len(self.hist)

    def tokens(self, rows: np.ndarray) -> torch.Tensor:
        """(k, V) rows -> (k, V * grid) int64: the views one after another."""
        return _flat(self.source.tokens, rows)


class _MultiViewData(_PairsData):
    pairs: MultiViewPairs
    views: int

    def _actions(self, rows: np.ndarray) -> torch.Tensor:
        return torch.zeros(len(rows), self.n_action_tokens, dtype=torch.long)

    def _take(self, rows: np.ndarray) -> SequenceBatch:
        p = self.pairs
        return SequenceBatch(p.tokens(p.hist[rows]), p.tokens(p.tgt[rows]), self._actions(rows),
                             torch.from_numpy(self.ids[rows]))


class MultiViewPretrainData(_MultiViewData):
    """Actionless multi-view sequences of every episode in the cache."""

    def __init__(self, cache: TokenCache, cameras: list[str], future_offset: int, n_action_tokens: int):
        if "robot" not in cache:
            raise DataFormatError(f"{cache.root}: no robot tokens (the cache holds {cache.sources})")
        self.pairs = MultiViewPairs(cache["robot"], list(cameras), future_offset, where=str(cache.root))
        self.views, self.n_action_tokens = len(cameras), n_action_tokens
        log.info("RLBench pre-training data: %d episodes x %d cameras, %d sequences", len(self.pairs.episodes),
                 self.views, len(self.pairs))

    def batch(self, batch_size: int, seed: int, rank: int, step: int, micro: int) -> SequenceBatch:
        return self._take(_rng(seed, rank, step, micro).integers(0, len(self.pairs), batch_size))

    def eval_batch(self, n: int, seed: int) -> SequenceBatch:
        rng = np.random.default_rng([seed, 99991])
        return self._take(rng.choice(len(self.pairs), size=min(n, len(self.pairs)), replace=False))


class KeyframeFinetuneData(_MultiViewData, _PerTaskData):
    """Multi-view sequences with keyframe actions of ``demos_per_task`` episodes of each task."""

    def __init__(self, cache: TokenCache, data_root: str | Path, rlb, coder: PoseActionCoder | None = None):
        from vpdd.rlbench.reader import load_episode

        if "robot" not in cache:
            raise DataFormatError(f"{cache.root}: no robot tokens (the cache holds {cache.sources})")
        src = cache["robot"]
        n_demos = rlb.finetune.demos_per_task
        records = {}
        for rec in src.items:
            records.setdefault(str(rec.get("episode")), rec)
        chosen: list[str] = []
        for task in rlb.tasks:
            eps = sorted((r for r in records.values() if r.get("task") == task), key=lambda r: int(r["seed"]))
            if len(eps) < n_demos:
                raise DataFormatError(f"{cache.root}: task {task!r} has {len(eps)} episodes, rlbench.finetune."
                                      f"demos_per_task={n_demos} were asked for (tasks in the cache: "
                                      f"{sorted({r.get('task') for r in records.values()})})")
            chosen += [str(r["episode"]) for r in eps[:n_demos]]
        poses, bins_of, self.keyframes = [], {}, {}
        for ep in chosen:
            demo = load_episode(Path(data_root) / ep, rlb.cameras, images=False)
            if len(demo) != int(records[ep]["length"]):
                raise DataFormatError(f"{Path(data_root) / ep}: {len(demo)} observations, but the token cache "
                                      f"{cache.root} encoded {records[ep]['length']} frames; rebuild the cache")
            keys = discover_keyframes(demo.gripper_open, demo.joint_velocities, rlb.stopping_delta, rlb.stop_buffer)
            self.keyframes[ep] = keys
            poses.append(demo.gripper_pose)
            bins_of[ep] = (keyframe_targets(keys, len(demo), rlb.chunk), demo.gripper_pose, demo.gripper_open)
        self.discretizer = coder or PoseActionCoder.fit_poses(np.concatenate(poses), rlb.translation_bins, rlb.chunk,
                                                              rlb.rotation_resolution)
        if self.discretizer.n_bins != rlb.translation_bins or self.discretizer.chunk != rlb.chunk:
            raise ValueError(f"action coder ({self.discretizer.n_bins} bins, chunk {self.discretizer.chunk}) does not "
                             f"match rlbench.translation_bins={rlb.translation_bins}, rlbench.chunk={rlb.chunk}")
        per_episode = {}
        for ep, (targets, pose, grip) in bins_of.items():
            per_episode[ep] = self.discretizer.encode_pose(pose[targets], grip[targets]).reshape(len(targets), -1)
        self.pairs = MultiViewPairs(src, list(rlb.cameras), rlb.finetune.future_offset, chosen, str(cache.root))
        self.action_bins = np.stack([per_episode[self.pairs.episodes[e]][s]
                                     for e, s in zip(self.pairs.episode, self.pairs.step, strict=True)])
        self.views, self.n_action_tokens = len(rlb.cameras), rlb.chunk * POSE_DIMS
        self.tasks, self.cameras = list(rlb.tasks), list(rlb.cameras)
        task_of = np.asarray([self.tasks.index(self.pairs.records[e]["task"]) for e in self.pairs.episode])
        self.rows_of_task = [np.flatnonzero(task_of == k) for k in range(len(self.tasks))]
        self.rlb = rlb
        log.info("RLBench fine-tuning data: %d tasks x %d demonstrations, %d sequences, %.1f keyframes per episode",
                 len(self.tasks), n_demos, len(self.pairs), np.mean([len(k) for k in self.keyframes.values()]))

    def _actions(self, rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.action_bins[rows])

    def describe(self) -> dict[str, Any]:
        r = self.rlb
        return {"benchmark": "rlbench", "tasks": self.tasks, "cameras": self.cameras,
                "episodes": list(self.pairs.episodes), "sequences": len(self.pairs), "keyframes": self.keyframes,
                "future_offset": r.finetune.future_offset, "keyframe_heuristic": {
                    "stopping_delta": r.stopping_delta, "stop_buffer": r.stop_buffer}}


def rlbench_config(cfg):
    """The root config as the RLBench stages see it: ``pretrain``/``finetune`` from ``rlbench``, and the
    action space K_a = ``rlbench.translation_bins``, ``rlbench.chunk`` keyframes x 7 tokens."""
    rlb = cfg.rlbench
    actions = dataclasses.replace(cfg.model.actions, n_bins=rlb.translation_bins, chunk=rlb.chunk, dim=POSE_DIMS)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, actions=actions), pretrain=rlb.pretrain,
                               finetune=rlb.finetune)


def train_rlbench_stage(stage: str, cfg, *, tokens: str | Path, tokenizer: str | Path, out: str | Path,
                        data_root: str | Path | None = None, **kwargs: Any):
    """:func:`vpdd.train.loop.train_stage` on the multi-view cache ``tokens``; fine-tuning also reads the
    PerAct data in ``data_root`` (keyframes). Other keyword arguments go to ``train_stage``."""
    from vpdd.train.loop import StageHooks, train_stage

    rlb = cfg.rlbench
    if stage == "finetune" and data_root is None:
        raise ValueError("RLBench fine-tuning needs the PerAct data for its keyframe actions: pass --data")

    def make_data(stage: str, cache: TokenCache, _cfg, _robot):
        if stage == "pretrain":
            return MultiViewPretrainData(cache, list(rlb.cameras), rlb.pretrain.future_offset, rlb.chunk * POSE_DIMS)
        return KeyframeFinetuneData(cache, data_root, rlb)

    if stage == "finetune":
        grid = list(TokenCache(tokens).grid_shape)
        options = {"views": len(rlb.cameras), "foresight": bool(rlb.foresight), "grid": grid,
                   "pool": int(rlb.foresight_pool),
                   # the 360 translation bins are always a table here (model.action.action_embedding is ActionNet's)
                   "action_embedding": "table"}
        hooks = StageHooks(make_data, action_net="multiview", action_options=options, param_keys=PARAM_KEYS[stage])
    else:
        hooks = StageHooks(make_data, param_keys=PARAM_KEYS[stage])
    return train_stage(stage, rlbench_config(cfg), tokens=tokens, tokenizer=tokenizer, out=out, hooks=hooks, **kwargs)
