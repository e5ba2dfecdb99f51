"""Shared RLBench artefacts, built once per session (memoised here; tests/rlbench/conftest.py and
tests/policy/test_contract.py load this file by path): a small generated PerAct dataset (16x16 frames,
3 tasks, 2 variations, 3 episodes each), a tiny tokenizer trained on its exported views, the multi-view
token cache, a pre-trained model and a fine-tuned keyframe policy (a few steps each)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

RES = 16
TASKS = ["pick_up_block", "slide_block_to_target", "push_button"]
CAMERAS = ["front", "left_shoulder", "right_shoulder", "wrist"]
_CACHE: dict[str, Any] = {}


def rlbench_params(synthetic, **overrides: Any) -> dict[str, Any]:
    """The tests' shrunk params (tests/train/synthetic.py) with a small rlbench group."""
    data = synthetic.params()
    r = data["rlbench"]
    r.update(cameras=list(CAMERAS), tasks=list(TASKS), image_size=RES, foresight_pool=1, eval_sampling_stride=5)
    r["generate"].update(tasks=list(TASKS), variations=2, episodes_per_task=3, segment_steps=3, pause_steps=1)
    for stage in ("pretrain", "finetune"):
        r[stage].update(steps=4, batch_size=4, grad_accum=1, log_every=2, checkpoint_every=4, ema_start=1,
                        ema_every=1, lr=2e-3, eval_samples=3, eval_stride=5, future_offset=4)
    r["finetune"]["demos_per_task"] = 2
    for dotted, value in overrides.items():
        node = data
        *head, last = dotted.split(".")
        for part in head:
            node = node[part]
        node[last] = value
    return data


def rlbench_config(synthetic, **overrides: Any):
    from vpdd.config import config_from_dict

    return config_from_dict(rlbench_params(synthetic, **overrides), source="rlbench test params")


def write_rlbench_params(synthetic, path: Path, **overrides: Any) -> Path:
    path.write_text(yaml.safe_dump(rlbench_params(synthetic, **overrides), sort_keys=False))
    return path


def replace_rlbench(cfg, **changes):
    """``cfg`` with ``rlbench`` fields replaced."""
    return dataclasses.replace(cfg, rlbench=dataclasses.replace(cfg.rlbench, **changes))


def data(synthetic, root: Path) -> Path:
    """The generated PerAct-format dataset (``root``: a fresh folder, used on the first call only)."""
    if "data" not in _CACHE:
        from vpdd.rlbench.synthetic import generate_dataset

        cfg = rlbench_config(synthetic)
        generate_dataset(root / "data", cfg.rlbench.generate, cfg.rlbench.image_size, CAMERAS)
        _CACHE["data"] = root / "data"
    return _CACHE["data"]


def tokens(synthetic, root: Path) -> dict[str, Path]:
    """A tokenizer trained on the exported views (4 steps) and the multi-view token cache."""
    if "tokens" not in _CACHE:
        from vpdd.rlbench.tokens import encode_rlbench, export_views
        from vpdd.tokenizer.train import train_tokenizer

        cfg = rlbench_config(synthetic)
        src = data(synthetic, root)
        root = src.parent
        views = root / "views"
        export_views(src, views, resolution=cfg.tokenizer.resolution, cameras=CAMERAS)
        tok = root / "tokenizer"
        train_tokenizer(cfg.tokenizer, tok, views, None, None, data_dvc=None, progress=False)
        cache = root / "tokens"
        encode_rlbench(tok, src, cache, cameras=CAMERAS, progress=False)
        _CACHE["tokens"] = {"data": src, "views": views, "tokenizer": tok, "tokens": cache, "root": root}
    return _CACHE["tokens"]


def trained(synthetic, root: Path) -> dict[str, Path]:
    """The artefacts plus a pre-trained multi-view model and a fine-tuned keyframe policy (4 steps each)."""
    if "trained" not in _CACHE:
        from vpdd.rlbench.training import train_rlbench_stage

        cfg = rlbench_config(synthetic)
        art = tokens(synthetic, root)
        root = art["root"]
        common = {"tokens": art["tokens"], "tokenizer": art["tokenizer"], "params_file": None, "progress": False}
        train_rlbench_stage("pretrain", cfg, out=root / "pretrain", live_dir=root / "live_pretrain", **common)
        train_rlbench_stage("finetune", cfg, out=root / "policy", live_dir=root / "live_finetune",
                            data_root=art["data"], pretrained=root / "pretrain", **common)
        _CACHE["trained"] = {**art, "pretrain": root / "pretrain", "policy": root / "policy"}
    return _CACHE["trained"]
