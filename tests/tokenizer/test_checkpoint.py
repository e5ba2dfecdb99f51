"""Checkpoint directories: round trip, identity hash, corruption detection, interrupted-save recovery."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch

from vpdd.runtime.checkpoint import (
    CheckpointError,
    checkpoint_hash,
    has_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from vpdd.runtime.seeding import rng_state, set_rng_state


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(4, 3, generator=g), "b.count": torch.arange(5), "c": torch.ones(())}


def test_round_trip_and_identity(tmp_path):
    ck = tmp_path / "ckpt"
    opt_state = {
        "step": 7,
        "optimizer": {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 1e-3}]},
    }
    save_checkpoint(ck, config={"kind": "demo", "n": 3}, weights=_weights(), training_state=opt_state, meta={"step": 7})
    assert sorted(p.name for p in ck.iterdir()) == [
        "config.json",
        "meta.json",
        "model.safetensors",
        "training_state.pt",
    ]
    loaded = load_checkpoint(ck, training_state=True)
    assert loaded.config == {"kind": "demo", "n": 3} and loaded.step == 7
    assert all(torch.equal(loaded.weights[k], v) for k, v in _weights().items())
    assert torch.equal(loaded.training_state["optimizer"]["state"][0]["exp_avg"], torch.ones(3))
    h = checkpoint_hash(ck)
    assert h == loaded.meta["checkpoint_hash"]
    # the identity ignores the training state, and follows the weights
    save_checkpoint(tmp_path / "stripped", config={"kind": "demo", "n": 3}, weights=_weights(), meta={"step": 1})
    assert checkpoint_hash(tmp_path / "stripped") == h
    save_checkpoint(tmp_path / "other", config={"kind": "demo", "n": 3}, weights=_weights(1))
    assert checkpoint_hash(tmp_path / "other") != h
    with pytest.raises(CheckpointError, match="cannot resume"):
        load_checkpoint(tmp_path / "stripped", training_state=True)


def test_corruption_is_detected(tmp_path):
    ck = tmp_path / "ckpt"
    save_checkpoint(ck, config={"kind": "demo"}, weights=_weights())
    data = bytearray((ck / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (ck / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(ck)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_checkpoint(tmp_path / "missing")


def test_replacing_is_atomic_and_interrupted_swaps_recover(tmp_path):
    ck = tmp_path / "ckpt"
    save_checkpoint(ck, config={"kind": "demo"}, weights=_weights(0), meta={"step": 1})
    save_checkpoint(ck, config={"kind": "demo"}, weights=_weights(1), meta={"step": 2})
    assert load_checkpoint(ck).step == 2
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary leftovers
    # a process killed between the two renames of the swap leaves only the old copy under a hidden name
    os.replace(ck, tmp_path / ".ckpt.old-12345")
    half = tmp_path / ".ckpt.abcd.tmp"  # and a half-built new one without meta.json
    half.mkdir()
    (half / "config.json").write_text(json.dumps({"kind": "demo"}))
    assert has_checkpoint(ck)
    assert load_checkpoint(ck).step == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_rng_state_round_trip(tmp_path):
    state = rng_state()
    save_checkpoint(tmp_path / "c", config={}, weights={}, training_state={"rng": state})
    expected = (random.random(), np.random.rand(), torch.rand(2))
    set_rng_state(load_checkpoint(tmp_path / "c", training_state=True).training_state["rng"])
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(2), expected[2])
