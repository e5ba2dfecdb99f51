"""Small real artefacts for the model, training and policy tests: synthetic robot episodes with
Meta-World-like actions, an ingested corpus, a tiny tokenizer, its token cache, and a root config sized so a
training step takes milliseconds. Built once per test session (memoised here; the conftests of
tests/train, tests/policy and tests/models load this file by path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

RES = 16
TASKS = ["reach-v3", "push-v3"]
_CACHE: dict[str, Any] = {}


def moving_square_video(rng: np.random.Generator, length: int, res: int = RES) -> np.ndarray:
    frames = np.zeros((length, res, res, 3), np.uint8)
    frames[:, : res // 2] = rng.integers(40, 90, 3)
    frames[:, res // 2 :] = rng.integers(120, 180, 3)
    colour, size = rng.integers(0, 256, 3), res // 4
    pos, vel = rng.uniform(0, res - size, 2), rng.uniform(-1.0, 1.0, 2)
    for t in range(length):
        y, x = (int(v) for v in pos)
        frames[t, y : y + size, x : x + size] = colour
        pos = np.clip(pos + vel, 0, res - size)
    return frames


def scripted_actions(rng: np.random.Generator, length: int) -> np.ndarray:
    """xyz: a smooth walk clipped to [-1, 1] (saturating like the scripted experts); gripper: -1 then +1."""
    xyz = np.clip(np.cumsum(rng.normal(0, 0.4, (length, 3)), axis=0), -1, 1)
    grip = np.where(np.arange(length) < length // 2, -1.0, 1.0)[:, None]
    return np.concatenate([xyz, grip], axis=1).astype(np.float32)


def write_robot_root(root: Path, demos: int = 3, seed: int = 0) -> Path:
    from vpdd.data.episodes import Episode, save_episode, write_index
    from vpdd.envs.tasks import INSTRUCTIONS

    rng = np.random.default_rng(seed)
    entries = []
    for task in TASKS:
        for k in range(demos):
            length = int(rng.integers(24, 32))
            ep = Episode(frames=moving_square_video(rng, length), actions=scripted_actions(rng, length),
                         states=np.zeros((length, 39), np.float32), success=np.zeros(length, bool),
                         meta={"task": task, "seed": k, "instruction": INSTRUCTIONS[task]})
            rel = f"{task}/episode_{k:04d}.npz"
            save_episode(root / rel, ep)
            entries.append({"task": task, "seed": k, "path": rel, "length": length, "success": True,
                            "instruction": INSTRUCTIONS[task]})
    write_index(root, entries)
    return root


def write_corpus_root(tmp: Path, seed: int = 1) -> Path:
    from vpdd.data.corpus import ingest_videos
    from vpdd.data.video import write_video

    rng = np.random.default_rng(seed)
    src = tmp / "videos"
    for k, length in enumerate([40, 48, 33]):
        write_video(src / f"clip_{k}.mp4", moving_square_video(rng, length))
        if k == 0:
            (src / f"clip_{k}.txt").write_text("a hand opens a drawer\n")
    out = tmp / "corpus"
    ingest_videos(src, out, resolution=RES, clip_length=8, clip_stride=8, min_frames=8, progress=False)
    return out


def params(**overrides: Any) -> dict[str, Any]:
    """A composed-params dict (the tiny preset shrunk further) as a plain nested dict."""
    import copy

    from vpdd.config import compose

    if "composed" not in _CACHE:
        _CACHE["composed"] = compose([], conf_dir=Path(__file__).resolve().parents[2] / "conf")
    data = copy.deepcopy(_CACHE["composed"])
    data["env"]["resolution"] = RES
    data["data"]["robot"]["tasks"] = list(TASKS)
    data["data"]["robot"]["demos_per_task"] = 3
    data["data"]["task_video"]["episodes_per_task"] = 0  # no simulator here: the task-video set is empty
    data["tokenizer"].update(resolution=RES, n_codes=32, embedding_dim=8, n_hiddens=16, n_res_layers=1,
                             batch_size=4, steps=4, eval_clips=4, eval_every=4, log_every=2, checkpoint_every=4,
                             heldout_fraction=0.2)
    data["model"]["video"].update(dim=16, depth=1, num_latents=8, dim_head=8)
    data["model"]["action"].update(n_layer=1, n_head=2, n_embd=16, n_inner=32)
    data["diffusion"]["num_timesteps"] = 10
    for stage in ("pretrain", "finetune"):
        data[stage].update(steps=6, batch_size=4, grad_accum=2, log_every=2, checkpoint_every=3, ema_start=2,
                           ema_every=1, lr=2e-3, eval_samples=4, eval_stride=5)
    data["finetune"]["demos_per_task"] = 3
    for dotted, value in overrides.items():
        node = data
        *head, last = dotted.split(".")
        for part in head:
            node = node[part]
        node[last] = value
    return data


def config(**overrides: Any):
    from vpdd.config import config_from_dict

    return config_from_dict(params(**overrides), source="test params")


def write_params(path: Path, **overrides: Any) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(params(**overrides), sort_keys=False))
    return path


def artefacts(root: Path) -> dict[str, Path]:
    """robot, corpus, tokenizer, tokens (built once per session under ``root``)."""
    if "base" in _CACHE:
        return _CACHE["base"]
    from vpdd.tokenizer.encode import encode_dataset
    from vpdd.tokenizer.train import train_tokenizer

    cfg = config()
    robot = write_robot_root(root / "metaworld")
    corpus = write_corpus_root(root / "corpus_src")
    tok = root / "tokenizer"
    train_tokenizer(cfg.tokenizer, tok, robot, corpus, None, data_dvc=None, progress=False)
    tokens = root / "tokens"
    encode_dataset(tok, tokens, robot=robot, corpus=corpus, params=cfg.tokenizer, data_dvc=None, progress=False)
    _CACHE["base"] = {"robot": robot, "corpus": corpus, "tokenizer": tok, "tokens": tokens, "root": root}
    return _CACHE["base"]


def trained(root: Path) -> dict[str, Path]:
    """The artefacts plus a pre-trained model and a fine-tuned policy (6 steps each)."""
    if "trained" in _CACHE:
        return _CACHE["trained"]
    from vpdd.train.loop import train_stage

    base = artefacts(root)
    cfg = config()
    pre, pol = root / "pretrain", root / "policy"
    train_stage("pretrain", cfg, tokens=base["tokens"], tokenizer=base["tokenizer"], out=pre,
                live_dir=root / "live_pretrain", params_file=None, progress=False)
    train_stage("finetune", cfg, tokens=base["tokens"], tokenizer=base["tokenizer"], out=pol,
                live_dir=root / "live_finetune", robot=base["robot"], pretrained=pre, params_file=None,
                progress=False)
    _CACHE["trained"] = {**base, "pretrain": pre, "policy": pol}
    return _CACHE["trained"]

