"""Closed-loop evaluation: statistics, seeding, and `vpdd eval run` on a real (tiny) policy in Meta-World."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from vpdd.eval.closed_loop import EpisodeResult, scene_seeds, summarise, wilson_interval
from vpdd.eval.compare import CompareError, comparison_table


def test_wilson_interval_contains_the_rate_and_shrinks_with_more_episodes():
    for wins, n in [(0, 20), (20, 20), (7, 20), (1, 3)]:
        lo, hi = wilson_interval(wins, n)
        assert 0.0 <= lo <= wins / n <= hi <= 1.0
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == pytest.approx(1.0)
    assert all(wilson_interval(n, n)[1] == 1.0 for n in range(1, 300))  # never a hair below the rate (plots)
    small, large = wilson_interval(10, 20), wilson_interval(100, 200)
    assert large[1] - large[0] < small[1] - small[0]
    # the textbook value: 8/10 -> [0.490, 0.943]
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-3)


def test_scene_seeds_are_stable_distinct_and_not_the_training_scenes():
    from vpdd.data.collect import episode_seed

    a = scene_seeds("drawer-close-v3", 0, 50)
    assert a == scene_seeds("drawer-close-v3", 0, 50)
    assert len(set(a)) == 50
    assert set(a).isdisjoint(scene_seeds("drawer-close-v3", 1, 50))
    assert set(a).isdisjoint(scene_seeds("button-press-topdown-v3", 0, 50))
    training = {episode_seed(base, "drawer-close-v3", k) for base in range(3) for k in range(200)}
    assert training.isdisjoint(a)


def _episodes(pattern: dict[str, list[bool]], seed: int = 0) -> list[EpisodeResult]:
    return [EpisodeResult(task, seed, k, 1000 + k, ok, 10 if ok else 200, 3)
            for task, oks in pattern.items() for k, ok in enumerate(oks)]


def test_summarise_per_task_mean_and_per_seed():
    eps = _episodes({"a-v3": [True, True, False, False], "b-v3": [True, False, False, False]}, seed=0)
    eps += _episodes({"a-v3": [True, True, True, True], "b-v3": [False] * 4}, seed=1)
    m = summarise(eps, ["a-v3", "b-v3"], [0, 1])
    assert m["tasks"]["a-v3"]["success"] == pytest.approx(6 / 8)
    assert m["tasks"]["b-v3"]["successes"] == 1 and m["tasks"]["b-v3"]["episodes"] == 8
    assert m["mean_success"] == pytest.approx((6 / 8 + 1 / 8) / 2)
    assert m["per_seed_mean_success"] == {"0": pytest.approx(0.375), "1": pytest.approx(0.5)}
    assert m["ci95"][0] < m["mean_success"] < m["ci95"][1]
    assert m["tasks"]["b-v3"]["mean_steps_to_success"] == 10


def test_comparison_table_marks_overlapping_intervals():
    eps_good = _episodes({"a-v3": [True] * 19 + [False]})
    eps_bad = _episodes({"a-v3": [False] * 19 + [True]})
    eps_mid = _episodes({"a-v3": [True] * 16 + [False] * 4})
    rows = [(n, summarise(e, ["a-v3"], [0])) for n, e in (("vpdd", eps_good), ("scratch", eps_bad), ("mid", eps_mid))]
    lines = comparison_table(rows).splitlines()
    assert lines[2].startswith("| vpdd | 0.950") and lines[2].endswith("| - |")
    assert lines[3].startswith("| scratch | 0.050") and lines[3].endswith("| no |")
    assert lines[4].endswith("| yes |")
    with pytest.raises(CompareError, match="scratch: evaluated on"):
        comparison_table([rows[0], ("scratch", summarise(_episodes({"b-v3": [True]}), ["b-v3"], [0]))])


@pytest.mark.sim
def test_vpdd_eval_run_end_to_end_is_deterministic(trained, synthetic, tmp_path, tool_env):
    """A real policy in real Meta-World (tiny sizes): the files a user reads, identical on a rerun."""
    params = synthetic.write_params(tmp_path / "params.yaml")
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        cmd = ["vpdd", "eval", "run", "--policy", str(trained["policy"]), "--params",
               str(params), "--out", str(out), "--tasks", "reach-v3", "--episodes", "3", "--seeds", "0", "1",
               "--max-steps", "6", "--n-envs", "2", "--execute-steps", "2", "--sampling-stride", "5",
               "--videos", "1"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=tool_env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "reach-v3" in proc.stdout and "ms per environment step" in proc.stdout
        outs.append(out)
    from vpdd.utils.records import read_record

    metrics_only = json.loads((outs[0] / "metrics.json").read_text())
    assert not {"settings", "machine", "policy", "timing", "videos"} & set(metrics_only)  # those are in run.json
    m = read_record(outs[0] / "metrics.json")
    assert m["episodes"] == 6 and set(m["tasks"]) == {"reach-v3"}
    assert m["settings"]["reverse_steps"] == 2 and m["settings"]["execute_steps"] == 2
    assert m["settings"]["truncation_r"] == 0.88  # eval.truncation_r null: the checkpoint's
    episodes = json.loads((outs[0] / "episodes.json").read_text())
    assert [e["eval_seed"] for e in episodes] == [0, 0, 0, 1, 1, 1]
    assert all(1 <= e["steps"] <= 6 for e in episodes)
    # a policy call every 2 steps while an episode runs
    assert all(e["policy_calls"] == -(-e["steps"] // 2) for e in episodes)
    assert episodes == json.loads((outs[1] / "episodes.json").read_text())
    assert len(m["videos"]) == 2  # one per task and seed
    for rel in m["videos"]:
        from vpdd.data.video import read_video

        frames = read_video(outs[0] / rel)
        assert frames.shape[1:] == (16 * 4, 16 * 4, 3) and len(frames) >= 1
    assert (outs[0] / "success.png").stat().st_size > 1000
    assert json.loads((outs[0] / "success.json").read_text())["success"][0]["task"] == "reach"
    assert np.isclose(m["timing"]["s_per_env_step"] * m["timing"]["env_steps"], m["timing"]["wall_s"])


def test_vpdd_eval_run_rejects_bad_input(trained, synthetic, tmp_path, tool_env):
    params = synthetic.write_params(tmp_path / "params.yaml")
    base = ["vpdd", "eval", "run", "--params", str(params), "--out", str(tmp_path / "o")]
    proc = subprocess.run([*base, "--policy", str(tmp_path / "missing")], capture_output=True, text=True,
                          env=tool_env, timeout=300)
    assert proc.returncode != 0 and "missing" in proc.stderr and "does not exist" in proc.stderr
    proc = subprocess.run([*base, "--policy", str(trained["policy"]), "--episodes", "0"], capture_output=True,
                          text=True, env=tool_env, timeout=300)
    assert proc.returncode == 2 and "eval.episodes_per_task" in proc.stderr
    proc = subprocess.run([*base, "--policy", str(trained["pretrain"])], capture_output=True, text=True,
                          env=tool_env, timeout=300)
    assert proc.returncode != 0 and "fine-tuned policy" in proc.stderr


def test_read_metrics_from_a_git_revision_and_a_dvc_experiment_ref(tmp_path, monkeypatch):
    from vpdd.eval.compare import read_metrics

    m = summarise(_episodes({"a-v3": [True, False]}), ["a-v3"], [0])
    monkeypatch.chdir(tmp_path)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], check=True)
    (tmp_path / "metrics.json").write_text(json.dumps(m))
    subprocess.run([*git, "add", "metrics.json"], check=True)
    subprocess.run([*git, "commit", "-qm", "m"], check=True)
    sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["git", "update-ref", "refs/exps/ab/cdef/no-pretrain", sha], check=True)
    (tmp_path / "metrics.json").write_text("{}")  # the workspace copy differs: the revision's is read
    assert read_metrics("HEAD:metrics.json")["mean_success"] == 0.5
    assert read_metrics("no-pretrain:metrics.json")["episodes"] == 2
    with pytest.raises(ValueError, match="no other.json in git revision or DVC experiment 'HEAD'"):
        read_metrics("HEAD:other.json")


def test_eval_truncation_r_reaches_the_policy_and_one_greedy_step_ignores_the_seed(trained, synthetic, tmp_path):
    """``eval.truncation_r`` is what the evaluated policy truncates with; with a tiny r and one reverse step
    (stride = T) every action token is the argmax of one x0 prediction, so the sampler's seed cannot matter,
    while the default r = 0.88 still samples."""
    from dataclasses import replace

    from vpdd.config import load_config
    from vpdd.eval.report import load_policy, settings_from_config

    cfg = load_config(synthetic.write_params(tmp_path / "params.yaml"))
    steps = cfg.diffusion.num_timesteps
    settings = replace(settings_from_config(cfg), sampling_stride=steps)
    assert settings.truncation_r is None
    window = np.random.default_rng(0).integers(0, 255, (6, cfg.tokenizer.encode_window, *(2 * [cfg.env.resolution]), 3),
                                               dtype=np.uint8)

    def chunks(policy, seed):
        policy.reset(seed=seed)
        return policy.predict_windows(window, texts)

    greedy = load_policy(trained["policy"], replace(settings, truncation_r=1e-6))
    assert greedy.truncation_r == 1e-6
    texts = [greedy.table.texts[0]] * 6  # an instruction the policy was trained with
    np.testing.assert_array_equal(chunks(greedy, 0), chunks(greedy, 1))
    sampled = load_policy(trained["policy"], settings)
    assert sampled.truncation_r is None and sampled.scheduler.truncation_r == 0.88
    assert any(not np.array_equal(chunks(sampled, 0), chunks(sampled, s)) for s in range(1, 4))
