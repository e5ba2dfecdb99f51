"""Saving and loading tokenizer checkpoints (directories in the :mod:`vpdd.runtime.checkpoint` layout).

``config.json`` holds ``{"kind": "vpdd-tokenizer", "format": 1, "tokenizer": <TokenizerConfig>, ...}`` plus
derived facts a consumer needs without building the network (resolution, encode window, latent grid per
window, vocabulary size). ``model.safetensors`` holds the inference weights (codebook vectors included);
the EMA statistics of the codebook live with the optimizer in ``training_state.pt``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from vpdd.config.tokenizer import TokenizerConfig
from vpdd.runtime.checkpoint import Checkpoint, CheckpointError, load_checkpoint, read_config
from vpdd.tokenizer.model import VQVAE, VQVAEArch

log = logging.getLogger(__name__)

KIND = "vpdd-tokenizer"
FORMAT = 1
# Keys that fix the network or the data it was trained on: they must match to resume or to encode.
ARCH_KEYS = (
    "resolution",
    "n_codes",
    "embedding_dim",
    "n_hiddens",
    "n_res_layers",
    "downsample",
    "attn_heads",
    "ema_decay",
    "commitment_weight",
)
# Keys of a run that may change when it is resumed (schedule and bookkeeping).
RESUMABLE_KEYS = (
    "steps",
    "log_every",
    "checkpoint_every",
    "eval_every",
    "eval_clips",
    "encode_batch_size",
    "explode_factor",
)


def config_dict(cfg: TokenizerConfig) -> dict[str, Any]:
    arch = VQVAEArch.from_config(cfg)
    return {
        "kind": KIND,
        "format": FORMAT,
        "tokenizer": dataclasses.asdict(cfg),
        "resolution": cfg.resolution,
        "clip_length": cfg.clip_length,
        "encode_window": cfg.encode_window,
        "n_codes": cfg.n_codes,
        "latent_shape": list(arch.latent_shape(cfg.encode_window)),
        "input": "uint8 RGB frames (T, H, W, 3) scaled to [-0.5, 0.5], channels first (B, 3, T, H, W)",
    }


def config_from_checkpoint(config: dict[str, Any], source: str | Path) -> TokenizerConfig:
    if config.get("kind") != KIND:
        raise CheckpointError(f"{source}: not a tokenizer checkpoint (kind={config.get('kind')!r}, expected {KIND!r})")
    if config.get("format") != FORMAT:
        raise CheckpointError(
            f"{source}: tokenizer checkpoint format {config.get('format')!r}, this code reads format {FORMAT}"
        )
    known = {f.name for f in dataclasses.fields(TokenizerConfig)}
    return TokenizerConfig(**{k: v for k, v in config["tokenizer"].items() if k in known})


def build_model(cfg: TokenizerConfig) -> VQVAE:
    return VQVAE(VQVAEArch.from_config(cfg))


def differing_keys(saved: TokenizerConfig, wanted: TokenizerConfig, keys) -> list[str]:
    out = []
    for k in keys:
        a, b = getattr(saved, k), getattr(wanted, k)
        if (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
            out.append(f"{k}: checkpoint {a!r} vs params {b!r}")
    return out


def load_tokenizer(path: str | Path, device: str | torch.device = "cpu") -> tuple[VQVAE, TokenizerConfig, Checkpoint]:
    """The trained tokenizer in ``path`` in eval mode, its config, and the checkpoint record."""
    path = Path(path)
    ckpt = load_checkpoint(path, training_state=False)
    cfg = config_from_checkpoint(ckpt.config, path)
    model = build_model(cfg)
    model.load_inference_state_dict(ckpt.weights)
    return model.to(device).eval(), cfg, ckpt


def peek_config(path: str | Path) -> TokenizerConfig:
    """The tokenizer config of a checkpoint without loading its weights."""
    return config_from_checkpoint(read_config(path), path)
