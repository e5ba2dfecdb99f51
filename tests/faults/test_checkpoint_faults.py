"""Checkpoint writes killed at random points, corrupted or crafted files: recovery or an error naming the file."""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vpdd.rlbench.reader import PerActFormatError, UnsafePickleError, safe_load_pickle
from vpdd.runtime.checkpoint import (
    META_NAME,
    STATE_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from vpdd.utils.io import sha256_file

WRITER = """
import sys, torch
from vpdd.runtime.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
out = sys.argv[1]
step = load_checkpoint(out).meta["step"] if has_checkpoint(out) else 0  # a restarted writer continues
print("ready", flush=True)
while True:
    step += 1
    w = {"w": torch.full((256, 256), float(step))}
    save_checkpoint(out, config={"step": step}, weights=w, training_state={"step": step}, meta={"step": step})
"""


def _save(path: Path, step: int = 1) -> Path:
    return save_checkpoint(path, config={"step": step}, weights={"w": torch.full((4,), float(step))},
                           training_state={"step": step}, meta={"step": step})


def _rehash(path: Path) -> None:
    """Rewrite meta.json so every file matches again (an attacker or a careless tool)."""
    meta = json.loads((path / META_NAME).read_text())
    meta["files"] = {name: sha256_file(path / name) for name in meta["files"]}
    (path / META_NAME).write_text(json.dumps(meta))


def test_kill_9_at_random_points_of_checkpoint_writes_never_corrupts(tmp_path):
    rng = random.Random(17)
    out = tmp_path / "ckpt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    last = 0
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], stdout=subprocess.PIPE, env=env)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if not (out / META_NAME).exists() and not any(tmp_path.glob(".ckpt.*")):
            continue  # killed before the first save began
        ck = load_checkpoint(out, training_state=True)  # recovers an interrupted swap
        step = ck.meta["step"]
        assert ck.config["step"] == step == ck.training_state["step"] and step >= last
        assert torch.equal(ck.weights["w"], torch.full((256, 256), float(step)))
        last = step
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ckpt.")]  # leftovers cleaned


def test_a_file_failing_its_hash_is_named(tmp_path):
    path = _save(tmp_path / "c")
    (path / WEIGHTS_NAME).write_bytes((path / WEIGHTS_NAME).read_bytes()[:-4] + b"\x00\x00\x00\x01")
    with pytest.raises(CheckpointError, match=f"{WEIGHTS_NAME}: corrupted"):
        load_checkpoint(path)


def test_an_invalid_meta_json_gets_its_own_message(tmp_path):
    path = _save(tmp_path / "c")
    (path / META_NAME).write_text("{not json")
    with pytest.raises(CheckpointError, match=f"{META_NAME}: not valid JSON"):
        load_checkpoint(path)
    (path / META_NAME).write_text('{"files": 3}')
    with pytest.raises(CheckpointError, match="invalid checkpoint metadata"):
        load_checkpoint(path)


def test_a_rehashed_corrupt_safetensors_is_a_clear_error(tmp_path):
    path = _save(tmp_path / "c")
    (path / WEIGHTS_NAME).write_bytes(b"\xff" * 64)
    _rehash(path)
    with pytest.raises(CheckpointError, match=f"{WEIGHTS_NAME}: not a readable safetensors file"):
        load_checkpoint(path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_malicious_training_state_names_the_file_and_runs_nothing(tmp_path):
    path = _save(tmp_path / "c")
    buf = io.BytesIO()
    torch.save({"step": _Evil()}, buf)
    (path / STATE_NAME).write_bytes(buf.getvalue())
    _rehash(path)
    with pytest.raises(CheckpointError, match=f"{STATE_NAME}: refused or unreadable training state"):
        load_checkpoint(path, training_state=True)


def test_a_30_byte_pickle_cannot_allocate_a_gigabyte(tmp_path):
    import tracemalloc

    path = tmp_path / "low_dim_obs.pkl"
    path.write_bytes(b"cbuiltins\nbytearray\n(J\x00\x00\x00\x48tR.")  # bytearray(1.2 GB)
    assert len(path.read_bytes()) < 32
    tracemalloc.start()
    with pytest.raises(PerActFormatError, match="budget"):
        safe_load_pickle(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50 * 2**20  # nothing near the requested 1.2 GB was allocated
    for payload in (b"cnumpy\nndarray\n(J\x00\x00\x00\x48\x85tR.",):
        path.write_bytes(payload)
        with pytest.raises(PerActFormatError, match=f"{path}.*budget"):
            safe_load_pickle(path)


def test_crafted_globals_are_refused_and_real_arrays_still_load(tmp_path):
    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(UnsafePickleError, match=str(path)):
        safe_load_pickle(path)
    arr = np.arange(12.0).reshape(3, 4)
    for proto in (0, 2, 4, 5):
        path.write_bytes(pickle.dumps({"a": arr, "b": bytearray(b"xy")}, protocol=proto))
        got = safe_load_pickle(path)
        assert np.array_equal(got["a"], arr) and got["b"] == bytearray(b"xy")


def test_ragged_joint_velocities_name_the_file(tmp_path):
    from vpdd.rlbench.reader import Demo, Observation, _check_observations

    obs = [Observation(gripper_pose=np.zeros(7), gripper_open=1.0, joint_velocities=np.zeros(n),
                       gripper_joint_positions=np.zeros(2)) for n in (7, 7, 6)]
    path = tmp_path / "episode0" / "low_dim_obs.pkl"
    with pytest.raises(PerActFormatError, match=f"{path}: observation 2: joint_velocities.*ragged"):
        _check_observations(Demo(obs), path)
