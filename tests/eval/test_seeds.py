"""The seed study (vpdd/eval/seeds.py) and its runner's bookkeeping (benchmarks/finetune_seeds.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from vpdd.eval import seeds as study


def _episodes(outcomes: dict[str, list[int]]) -> list[dict]:
    return [{"task": task, "eval_seed": i % 2, "scene_seed": 100 + i, "success": bool(ok), "steps": 10,
             "episode": i // 2, "policy_calls": 3} for task, oks in outcomes.items() for i, ok in enumerate(oks)]


def _write(root, arm, seed, outcomes):
    d = root / arm / f"seed{seed}" / "eval"
    d.mkdir(parents=True)
    (d / "episodes.json").write_text(json.dumps(_episodes(outcomes)))


def test_t_quantiles_and_the_interval_over_seeds():
    assert study.t975(2) == pytest.approx(4.303) and study.t975(200) == pytest.approx(1.972)
    s = study.mean_interval(np.array([0.4, 0.5, 0.6]))
    assert s["mean"] == pytest.approx(0.5) and s["std"] == pytest.approx(0.1)
    assert s["ci95"] == pytest.approx([0.5 - 4.303 * 0.1 / math.sqrt(3), 0.5 + 4.303 * 0.1 / math.sqrt(3)])
    assert study.mean_interval(np.array([0.3]))["ci95"] is None  # one seed: no interval, not a zero-width one
    assert study.mean_interval(np.array([0.1, 0.9]), (0.0, 1.0))["ci95"] == [0.0, 1.0]  # a rate stays in [0, 1]


def test_the_study_pairs_arms_seed_by_seed_on_the_same_scenes(tmp_path):
    # baseline: seed 0 -> 1/4, seed 1 -> 2/4; variant: seed 0 -> 3/4, seed 1 -> 3/4 (+0.5 and +0.25)
    _write(tmp_path, "base", 0, {"a-v3": [1, 0], "b-v3": [0, 0]})
    _write(tmp_path, "base", 1, {"a-v3": [1, 1], "b-v3": [0, 0]})
    _write(tmp_path, "new", 0, {"a-v3": [1, 1], "b-v3": [1, 0]})
    _write(tmp_path, "new", 1, {"a-v3": [1, 1], "b-v3": [0, 1]})
    _write(tmp_path, "new", 2, {"a-v3": [1, 1], "b-v3": [1, 1]})  # a seed the baseline lacks: not compared
    s = study.seed_study(study.read_study(tmp_path), baseline="base")
    assert s["seeds"] == [0, 1] and s["tasks"] == ["a-v3", "b-v3"]
    new = s["arms"]["new"]
    assert new["per_seed"] == {0: 0.75, 1: 0.75} and new["per_task"] == {"a-v3": 1.0, "b-v3": 0.5}
    diff = new["minus_baseline"]
    assert diff["per_seed"] == {0: 0.5, 1: 0.25}
    assert diff["over_seeds"]["mean"] == pytest.approx(0.375)
    half = 12.706 * np.std([0.5, 0.25], ddof=1) / math.sqrt(2)
    assert diff["over_seeds"]["ci95"] == pytest.approx([max(-1.0, 0.375 - half), min(1.0, 0.375 + half)])
    assert diff["over_scenes"]["n"] == 8 and diff["over_scenes"]["mean"] == pytest.approx(0.375)
    assert s["arms"]["base"]["minus_baseline"] is None
    table = study.seed_study_table(s)
    assert "| new | 0.750 [0.750, 0.750] | 0.750 | 0.750 | 1.00 | 0.50 | +0.375 [" in table


def test_runs_on_other_scenes_or_a_missing_baseline_are_refused(tmp_path):
    _write(tmp_path, "base", 0, {"a-v3": [1, 0]})
    _write(tmp_path, "new", 0, {"b-v3": [1, 0]})
    runs = study.read_study(tmp_path)
    with pytest.raises(study.StudyError, match="new seed 0: evaluated on other scenes"):
        study.seed_study(runs, baseline="base")
    with pytest.raises(study.StudyError, match="baseline arm 'nope'"):
        study.seed_study(runs, baseline="nope")
    with pytest.raises(study.StudyError, match="no <arm>/seed<k>"):
        study.read_study(tmp_path / "empty")


def _load_runner(repo_root):
    """benchmarks/finetune_seeds.py as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("finetune_seeds", repo_root / "benchmarks" / "finetune_seeds.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    return runner


def test_the_runner_skips_done_pairs_and_takes_reused_evaluations(tmp_path, repo_root, monkeypatch):
    runner = _load_runner(repo_root)
    src = tmp_path / "pipeline_eval"
    src.mkdir()
    for name in ("metrics.json", "episodes.json", "run.json"):
        (src / name).write_text("{}")
    calls = []
    monkeypatch.setattr(runner.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    out = tmp_path / "study"
    assert runner.main(["run", "--out", str(out), "--seeds", "0", "--arm", "a", "finetune.seed=0",
                        "--reuse", f"a:0={src}"]) == 0
    assert calls == []  # the reused pair is done: nothing trains
    assert (out / "a" / "seed0" / "eval" / "metrics.json").is_file()
    assert (out / "a" / "seed0" / "reused_from.txt").read_text().strip() == str(src)
    with pytest.raises(SystemExit, match="no key 'nope'"):
        runner.main(["run", "--out", str(out), "--seeds", "1", "--arm", "b", "finetune.nope=1",
                     "--params", str(repo_root / "params.yaml")])


def test_eval_only_arms_share_one_fine_tuned_policy_per_seed(tmp_path, repo_root, monkeypatch):
    """Arms that change only eval.* settings act with the same policy: each seed fine-tunes once, into
    _shared/seed<k>, with none of the overrides; an arm that changes training has its own policy."""
    import types

    import yaml

    runner = _load_runner(repo_root)
    calls = []
    monkeypatch.setattr(runner.subprocess, "run",
                        lambda cmd, **kw: calls.append(cmd) or types.SimpleNamespace(returncode=0))
    out = tmp_path / "study"
    assert runner.main(["run", "--out", str(out), "--seeds", "0", "1", "--jobs", "2", "--params",
                        str(repo_root / "params.yaml"), "--arm", "sampled", "--arm", "greedy", "eval.truncation_r=1e-6",
                        "eval.sampling_stride=100", "--arm", "big", "finetune.batch_size=32"]) == 0
    trains = sorted(c[c.index("--out") + 1] for c in calls if c[1] == "train")
    assert trains == sorted([str(out / "_shared" / f"seed{s}" / "policy") for s in (0, 1)]
                            + [str(out / "big" / f"seed{s}" / "policy") for s in (0, 1)])
    evals = {(c[c.index("--out") + 1], c[c.index("--policy") + 1]) for c in calls if c[1] == "eval"}
    assert (str(out / "greedy" / "seed1" / "eval"), str(out / "_shared" / "seed1" / "policy")) in evals
    assert (str(out / "sampled" / "seed1" / "eval"), str(out / "_shared" / "seed1" / "policy")) in evals
    assert len(evals) == 6
    shared = yaml.safe_load((out / "_shared" / "seed1" / "params.yaml").read_text())
    arm = yaml.safe_load((out / "greedy" / "seed1" / "params.yaml").read_text())
    assert shared["finetune"]["seed"] == arm["finetune"]["seed"] == 1
    assert shared["eval"]["truncation_r"] is None and float(arm["eval"]["truncation_r"]) == 1e-6


def test_train_only_fine_tunes_and_a_later_run_evaluates_the_same_policies(tmp_path, repo_root, monkeypatch):
    import types

    runner = _load_runner(repo_root)
    calls = []
    monkeypatch.setattr(runner.subprocess, "run",
                        lambda cmd, **kw: calls.append(cmd) or types.SimpleNamespace(returncode=0))
    out = tmp_path / "study"
    args = ["run", "--out", str(out), "--seeds", "0", "--params", str(repo_root / "params.yaml"),
            "--arm", "table", "model.action.action_embedding=table"]
    assert runner.main([*args, "--train-only"]) == 0
    assert [c[1] for c in calls] == ["train"]
    calls.clear()
    assert runner.main(args) == 0
    assert [c[1] for c in calls] == ["eval"]  # fine-tuned before: only the evaluation runs
    assert calls[0][calls[0].index("--policy") + 1] == str(out / "table" / "seed0" / "policy")
