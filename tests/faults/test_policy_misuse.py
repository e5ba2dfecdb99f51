"""Policy API misuse and evaluation/CLI input errors: a PolicyError / exit 2 with a clear message."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vpdd.policy import PolicyError, VPDDPolicy
from vpdd.policy.base import MAX_INSTRUCTION_CHARS, check_instructions

from .conftest import run_cli


@pytest.mark.parametrize("instruction,fragment", [
    (None, "expected a string"), (3, "expected a string"), (b"open the drawer", "expected a string"),
    ("", "empty"), ("   ", "empty"), ("x" * 50_000, f"limit of {MAX_INSTRUCTION_CHARS}"),
    (["a", 3], "instruction 1: expected a string"), (["a"], "1 instructions for a batch of 2"),
])
def test_bad_instructions(instruction, fragment):
    with pytest.raises(PolicyError, match=fragment):
        check_instructions(instruction, 2)


def test_an_empty_batch():
    with pytest.raises(PolicyError, match="empty batch"):
        check_instructions("open", 0)


@pytest.mark.slow  # the session's trained policy: about a minute on 2 cores when built here
def test_policy_rejects_misuse(trained, synthetic):
    policy = VPDDPolicy.from_pretrained(trained["policy"])
    r = policy.resolution
    frame = np.zeros((r, r, 3), np.uint8)
    with pytest.raises(PolicyError, match="empty batch"):
        policy.select_action(np.zeros((0, r, r, 3), np.uint8), "open the drawer")
    for bad in (None, 7, b"bytes"):
        with pytest.raises(PolicyError, match="instruction"):
            policy.select_action(frame, bad)
    assert len(policy._history) == 0  # a refused call records nothing
    with pytest.raises(PolicyError, match="empty"):
        policy.select_action(frame, "")
    with pytest.raises(PolicyError, match="limit"):
        policy.select_action(frame, "x" * 50_000)
    for r_bad in (0.0, -1.0):
        with pytest.raises(PolicyError, match="truncation_r"):
            VPDDPolicy.from_pretrained(trained["policy"], truncation_r=r_bad)


@pytest.mark.slow  # the session's trained policy: about a minute on 2 cores when built here
def test_policy_info_on_a_rehashed_corrupt_checkpoint_is_one_line(trained, tmp_path):
    import shutil

    from vpdd.runtime.checkpoint import META_NAME, WEIGHTS_NAME
    from vpdd.utils.io import sha256_file

    path = tmp_path / "policy"
    shutil.copytree(trained["policy"], path)
    (path / WEIGHTS_NAME).write_bytes(b"\x00" * 100)
    meta = json.loads((path / META_NAME).read_text())
    meta["files"] = {n: sha256_file(path / n) for n in meta["files"]}
    (path / META_NAME).write_text(json.dumps(meta))
    code, err = run_cli("policy", "info", path)
    assert code == 2 and WEIGHTS_NAME in err and "Traceback" not in err


@pytest.mark.slow  # the session's trained policy: about a minute on 2 cores when built here
def test_eval_refuses_unseen_and_duplicate_tasks(trained, synthetic, tmp_path):
    params = synthetic.write_params(tmp_path / "params.yaml")
    seen = synthetic.TASKS[0]
    code, err = run_cli("eval", "run", "--policy", trained["policy"], "--params", params, "--out", tmp_path / "m",
                        "--tasks", seen, seen)
    assert code == 2 and "repeated" in err
    code, err = run_cli("eval", "run", "--policy", trained["policy"], "--params", params, "--out", tmp_path / "m",
                        "--tasks", "door-open-v3")
    assert code == 2 and "not fine-tuned on ['door-open-v3']" in err and "Traceback" not in err
