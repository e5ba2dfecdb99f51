"""Multi-view tokenization of RLBench episodes with the shared video tokenizer (``vpdd rlbench tokenize``).

Each camera of an episode is a separate video, encoded with the same VQ-VAE (as the released RLBench
datasets treat the four cameras: no cross-view coupling in the tokenizer, algorithm.md §2.4). The token
cache is the ordinary one (:mod:`vpdd.tokenizer.cache`): its ``robot`` source holds one item per
(episode, camera), keyed ``<episode folder>#<camera>``, with the records ``episode`` (the folder relative to
the data root), ``view``, ``task``, ``variation``, ``seed`` (the episode number), ``instruction`` (the first
variation description) and ``length``. The sequence datasets (:mod:`vpdd.rlbench.training`) put the views
of one episode back together. Frames are resized to the tokenizer's resolution on reading.

:func:`export_views` writes the same per-camera videos as a vpdd episode folder (``index.json`` + npz,
:mod:`vpdd.data.episodes`; actions = the 8-d end-effector pose + gripper, states = joint positions), so
``vpdd tokenizer train --robot <export>`` trains a tokenizer on RLBench frames (one tokenizer per
benchmark, as the paper) without new training code.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vpdd.rlbench.reader import CAMERAS, PerActEpisode, list_episodes, load_episode
from vpdd.tokenizer.data import VideoItem

log = logging.getLogger(__name__)

KEY_SEP = "#"


def episode_view_key(rel: str, camera: str) -> str:
    return f"{rel}{KEY_SEP}{camera}"


def view_items(episode: PerActEpisode, cameras: list[str] | tuple[str, ...]) -> list[VideoItem]:
    """One :class:`VideoItem` per camera of ``episode`` (frames already loaded)."""
    meta = {"episode": episode.ref.rel, "task": episode.task, "variation": episode.variation,
            "seed": episode.ref.index, "instruction": episode.instruction, "success": True}
    return [VideoItem("robot", episode_view_key(episode.ref.rel, cam), episode.frames[cam], {**meta, "view": cam})
            for cam in cameras]


def _listing_digest(root: Path, refs) -> str:
    import hashlib

    h = hashlib.sha256()
    for ref in refs:
        for f in sorted(p for p in ref.path.rglob("*") if p.is_file()):
            st = f.stat()
            h.update(f"{f.relative_to(root).as_posix()}\0{st.st_size}\n".encode())
    return h.hexdigest()


def encode_rlbench(
    tokenizer_dir: str | Path,
    data_root: str | Path,
    out: str | Path,
    *,
    cameras: list[str] | tuple[str, ...] = CAMERAS,
    tasks: list[str] | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    progress: bool | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write the multi-view token cache of the PerAct data in ``data_root`` to ``out``; returns its manifest."""
    from vpdd.tokenizer.cache import MANIFEST
    from vpdd.utils.io import check_output_dir

    guard = {"inputs": [tokenizer_dir, data_root], "marker": MANIFEST, "force": force}
    check_output_dir(out, **guard)
    from vpdd.runtime.checkpoint import checkpoint_hash
    from vpdd.tokenizer.cache import write_token_cache
    from vpdd.tokenizer.pretrained import config_dict, load_tokenizer

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                       else ("cpu" if device == "auto" else device))
    model, cfg, ckpt = load_tokenizer(tokenizer_dir, dev)
    root = Path(data_root)
    refs = list_episodes(root, tasks)
    items: list[VideoItem] = []
    t0 = time.time()
    for ref in refs:
        items += view_items(load_episode(ref, cameras, resolution=cfg.resolution), cameras)
    manifest = {
        "tokenizer": {"path": str(tokenizer_dir), "checkpoint_hash": checkpoint_hash(tokenizer_dir), "step": ckpt.step,
                      **{k: v for k, v in config_dict(cfg).items() if k != "input"}},
        "data_version": None,
        "inputs": {"rlbench": {"root": str(root), "cameras": list(cameras), "episodes": len(refs),
                               "tasks": sorted({r.task for r in refs}), "listing_sha256": _listing_digest(root, refs)}},
        "versions": {"torch": torch.__version__},
    }
    show = sys.stderr.isatty() if progress is None else progress
    manifest = write_token_cache(out, model, {"robot": items}, window=cfg.encode_window,
                                 batch_size=batch_size or cfg.encode_batch_size, manifest=manifest, device=dev,
                                 progress=show, inputs=guard["inputs"], force=force)
    log.info("encoded %d episodes x %d cameras in %.1f s -> %s", len(refs), len(cameras), time.time() - t0, out)
    return manifest


def export_views(data_root: str | Path, out: str | Path, *, resolution: int,
                 cameras: list[str] | tuple[str, ...] = CAMERAS, tasks: list[str] | None = None,
                 force: bool = False) -> dict[str, Any]:
    """Write every (episode, camera) of ``data_root`` as a vpdd episode under ``out`` (replaced atomically)."""
    from vpdd.data.episodes import Episode, save_episode, write_index
    from vpdd.utils.io import atomic_directory, check_output_dir

    guard = {"inputs": [data_root], "marker": "index.json", "force": force}
    check_output_dir(out, **guard)  # before any reading
    refs = list_episodes(data_root, tasks)
    entries = []
    with atomic_directory(out, **guard) as tmp:
        for ref in refs:
            ep = load_episode(ref, cameras, resolution=resolution)
            actions = np.concatenate([ep.gripper_pose, ep.gripper_open[:, None]], axis=1).astype(np.float32)
            states = ep.low_dim("joint_positions").astype(np.float32) if hasattr(ep.demo[0], "joint_positions") \
                else np.zeros((len(ep), 0), np.float32)
            for cam in cameras:
                rel = f"{ref.task}/episode{ref.index}_{cam}.npz"
                meta = {"task": ref.task, "instruction": ep.instruction, "seed": ref.index, "view": cam,
                        "variation": ep.variation, "episode": ref.rel, "source": "rlbench"}
                save_episode(tmp / rel, Episode(ep.frames[cam], actions, states, np.zeros(len(ep), bool), meta))
                # the seed orders episodes within a task; views of one episode get consecutive values
                entries.append({"task": ref.task, "seed": ref.index * len(cameras) + list(cameras).index(cam),
                                "path": rel, "length": len(ep), "success": True, "instruction": ep.instruction,
                                "view": cam, "episode": ref.rel, "variation": ep.variation})
        write_index(tmp, entries)
    return {"episodes": len(refs), "videos": len(entries), "cameras": list(cameras), "resolution": resolution}
