"""The RLBench adapter without RLBench: a clear error at construction, `vpdd info` and `vpdd rlbench evaluate`
say so, and the closed-loop keyframe evaluation loop (run against a small kinematic stand-in environment,
since the simulator cannot be installed here)."""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import pytest

from vpdd.rlbench.env import RLBenchEnv, RLBenchStep, RLBenchUnavailable, evaluate_keyframes, rlbench_status

INSTALL_WORDS = ("CoppeliaSim 4.1", "PyRep", "RLBench", "COPPELIASIM_ROOT", "LD_LIBRARY_PATH",
                 "QT_QPA_PLATFORM_PLUGIN_PATH")


def test_constructing_the_adapter_fails_at_once_with_install_steps(monkeypatch):
    monkeypatch.delenv("COPPELIASIM_ROOT", raising=False)
    t0 = time.time()
    with pytest.raises(RLBenchUnavailable) as info:
        RLBenchEnv("open_drawer")
    assert time.time() - t0 < 1.0
    msg = str(info.value)
    assert "the rlbench package is not importable" in msg and "COPPELIASIM_ROOT is not set" in msg
    for word in INSTALL_WORDS:
        assert word in msg, word
    assert "rlbench" not in sys.modules  # nothing of RLBench was imported


def test_status_names_each_missing_piece(monkeypatch, tmp_path):
    monkeypatch.setenv("COPPELIASIM_ROOT", str(tmp_path))
    monkeypatch.setenv("LD_LIBRARY_PATH", "/usr/lib")
    monkeypatch.delenv("QT_QPA_PLATFORM_PLUGIN_PATH", raising=False)
    status = rlbench_status()
    assert status["available"] is False
    assert "LD_LIBRARY_PATH does not contain $COPPELIASIM_ROOT" in status["problems"]
    assert "QT_QPA_PLATFORM_PLUGIN_PATH is not set" in status["problems"]
    monkeypatch.setenv("COPPELIASIM_ROOT", str(tmp_path / "missing"))
    assert f"COPPELIASIM_ROOT={tmp_path / 'missing'} is not a folder" in rlbench_status()["problems"]


def test_info_and_evaluate_report_that_rlbench_cannot_run(tmp_path, capsys, rlb, monkeypatch):
    from vpdd.cli import main

    monkeypatch.delenv("COPPELIASIM_ROOT", raising=False)
    assert main(["info", "--json", "--no-render-check"]) == 0
    sims = json.loads(capsys.readouterr().out)["simulators"]
    assert sims["rlbench"] is False and sims["rlbench_runnable"].startswith("no (the rlbench package is not")
    params = rlb.write_params(tmp_path / "params.yaml")
    out = tmp_path / "eval.json"
    code = main(["rlbench", "evaluate", "--policy", str(tmp_path / "no-policy"), "--params", str(params),
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "RLBench cannot run here" in err and "QT_QPA_PLATFORM_PLUGIN_PATH" in err
    assert not out.exists()


class PointEnv:
    """A kinematic stand-in with the adapter's interface: the task succeeds when a keyframe puts the gripper
    within 2 cm of the goal with the gripper closed."""

    def __init__(self, task: str, log: list):
        self.task, self.log, self.instruction = task, log, ""
        self.goal = np.zeros(3)

    def reset(self, seed: int):
        rng = np.random.default_rng(seed)
        self.goal = rng.uniform(-0.2, 0.2, 3)
        self.instruction = f"reach {self.task}"
        self.log.append(("reset", self.task, seed))
        return self.render()

    def render(self):
        return {"front": np.zeros((8, 8, 3), np.uint8)}

    def step(self, action):
        self.log.append(("step", self.task))
        ok = np.linalg.norm(action[:3] - self.goal) < 0.02 and action[7] == 0.0
        return RLBenchStep(self.render(), float(ok), bool(ok), bool(ok), {})

    def close(self):
        self.log.append(("close", self.task))


class GoalPolicy:
    """Acts on the environment it is bound to: goes straight to the goal (``good``) or somewhere else."""

    def __init__(self, good: bool):
        self.good, self.env, self.resets = good, None, []

    def reset(self, seed=None):
        self.resets.append(seed)

    def select_action(self, views, instruction):
        assert "front" in views and instruction.startswith("reach")
        target = self.env.goal if self.good else self.env.goal + 1.0
        return np.concatenate([target, [0, 0, 0, 1], [0.0]])


@pytest.mark.parametrize("good", [True, False])
def test_closed_loop_evaluation_counts_success_and_stops_at_the_step_limit(good):
    log: list = []
    policy = GoalPolicy(good)

    def make_env(task):
        policy.env = PointEnv(task, log)
        return policy.env

    result = evaluate_keyframes(policy, make_env, ["a", "b"], episodes=3, seed=10, max_steps=25)
    assert result["success_rate"] == (1.0 if good else 0.0)
    for task in ("a", "b"):
        eps = result["tasks"][task]["episodes"]
        assert [e["seed"] for e in eps] == [10, 11, 12]
        assert all(e["steps"] == (1 if good else 25) for e in eps)
        assert log.count(("step", task)) == 3 * (1 if good else 25)
        assert ("close", task) in log
    assert policy.resets == [10, 11, 12, 10, 11, 12]
