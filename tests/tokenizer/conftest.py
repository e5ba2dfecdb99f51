"""Small synthetic robot episodes and an ingested corpus, written with the real writers, and a tiny
tokenizer config that trains in a fraction of a second per step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vpdd.config.tokenizer import TokenizerConfig

RES = 16


def moving_square_video(rng: np.random.Generator, length: int, res: int = RES) -> np.ndarray:
    """A coloured square drifting over a two-tone background: (T, res, res, 3) uint8."""
    frames = np.zeros((length, res, res, 3), np.uint8)
    frames[:, : res // 2] = rng.integers(40, 90, 3)
    frames[:, res // 2 :] = rng.integers(120, 180, 3)
    colour = rng.integers(0, 256, 3)
    size = res // 4
    pos = rng.uniform(0, res - size, 2)
    vel = rng.uniform(-1.0, 1.0, 2)
    for t in range(length):
        y, x = (int(v) for v in pos)
        frames[t, y : y + size, x : x + size] = colour
        pos = np.clip(pos + vel, 0, res - size)
    return frames


def write_robot_root(root: Path, lengths: list[int], res: int = RES, seed: int = 0) -> Path:
    from vpdd.data.episodes import Episode, save_episode, write_index

    rng = np.random.default_rng(seed)
    entries = []
    for k, length in enumerate(lengths):
        task = ["reach-v3", "push-v3"][k % 2]
        ep = Episode(
            frames=moving_square_video(rng, length, res),
            actions=rng.standard_normal((length, 4)).astype(np.float32),
            states=rng.standard_normal((length, 39)).astype(np.float32),
            success=np.zeros(length, bool),
            meta={"task": task, "seed": k, "instruction": f"do {task}"},
        )
        rel = f"{task}/episode_{k:04d}.npz"
        save_episode(root / rel, ep)
        entries.append(
            {
                "task": task,
                "seed": k,
                "path": rel,
                "length": length,
                "success": False,
                "instruction": f"do {task}",
            }
        )
    write_index(root, entries)
    return root


def write_corpus_root(tmp: Path, lengths: list[int], res: int = RES, clip_length: int = 8, seed: int = 1) -> Path:
    from vpdd.data.corpus import ingest_videos
    from vpdd.data.video import write_video

    rng = np.random.default_rng(seed)
    src = tmp / "videos"
    for k, length in enumerate(lengths):
        write_video(src / f"clip_{k}.mp4", moving_square_video(rng, length, res))
    out = tmp / "corpus"
    ingest_videos(
        src,
        out,
        resolution=res,
        clip_length=clip_length,
        clip_stride=clip_length,
        min_frames=clip_length,
        progress=False,
    )
    return out


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    """The test models are tiny: one thread is as fast as two and immune to OpenMP spin-waiting when the
    machine is busy (subprocesses get OMP_NUM_THREADS=1 through ``subprocess_env``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def subprocess_env() -> dict[str, str]:
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="session")
def robot_root(tmp_path_factory) -> Path:
    return write_robot_root(tmp_path_factory.mktemp("robot") / "metaworld", [12, 30, 25, 18, 22, 9])


@pytest.fixture(scope="session")
def corpus_root(tmp_path_factory) -> Path:
    return write_corpus_root(tmp_path_factory.mktemp("corpus"), [26, 40, 33, 17])


def tiny_config(**overrides) -> TokenizerConfig:
    base = dict(
        resolution=RES,
        clip_length=4,
        encode_window=4,
        n_codes=32,
        embedding_dim=8,
        n_hiddens=16,
        n_res_layers=1,
        attn_heads=2,
        batch_size=4,
        steps=6,
        lr=1e-3,
        eval_clips=8,
        eval_every=3,
        log_every=2,
        checkpoint_every=3,
        encode_batch_size=16,
        heldout_fraction=0.2,
        seed=0,
    )
    base.update(overrides)
    return TokenizerConfig(**base)


@pytest.fixture
def tiny_cfg():
    return tiny_config
