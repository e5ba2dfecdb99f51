"""Paired comparisons over training seeds and scenes (vpdd/eval/paired.py) and `vpdd eval compare --paired`."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest

from vpdd.cli import main
from vpdd.eval import paired
from vpdd.eval.seeds import StudyError

TASKS = ("a-v3", "b-v3")


def _episodes(pattern: dict[str, list[int]]) -> list[dict]:
    """A `vpdd eval run` episodes.json list: per task, one success flag per scene."""
    return [{"task": task, "eval_seed": k % 2, "scene_seed": 1000 + k, "success": bool(ok), "steps": 10,
             "episode": k // 2, "policy_calls": 3} for task, oks in pattern.items() for k, ok in enumerate(oks)]


def _run(pattern: dict[str, list[int]]) -> paired.Outcomes:
    return paired.outcomes(_episodes(pattern), "test")


def _random_runs(n_seeds: int, n_scenes: int, rate: float, seed: int) -> list[paired.Outcomes]:
    rng = np.random.default_rng(seed)
    return [_run({t: list(rng.random(n_scenes) < rate) for t in TASKS}) for _ in range(n_seeds)]


def _plus(run: paired.Outcomes, per_task: int) -> paired.Outcomes:
    """``run`` with its first ``per_task`` failures of every task turned into successes."""
    out, done = dict(run), dict.fromkeys(TASKS, 0)
    for k in sorted(run):
        if not run[k] and done[k[0]] < per_task:
            out[k], done[k[0]] = True, done[k[0]] + 1
    assert all(v == per_task for v in done.values())
    return out


def test_episodes_are_read_from_a_folder_or_a_file_and_malformed_ones_are_named(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "episodes.json").write_text(json.dumps(_episodes({"a-v3": [1, 0, 1]})))
    out = paired.read_outcomes(tmp_path / "eval")
    assert out == {("a-v3", 0, 1000): True, ("a-v3", 1, 1001): False, ("a-v3", 0, 1002): True}
    assert paired.read_outcomes(tmp_path / "eval" / "episodes.json") == out
    with pytest.raises(StudyError, match="missing: no such file"):
        paired.read_outcomes(tmp_path / "missing")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(StudyError, match="bad.json: not readable as JSON"):
        paired.read_outcomes(tmp_path / "bad.json")
    broken = _episodes({"a-v3": [1, 0]})
    del broken[1]["scene_seed"]
    with pytest.raises(StudyError, match="run x: .*episode 1 without 'scene_seed'"):
        paired.outcomes(broken, "run x")
    with pytest.raises(StudyError, match="run x: scene .* appears twice"):
        paired.outcomes(_episodes({"a-v3": [1]}) * 2, "run x")
    with pytest.raises(StudyError, match="run x: .*expected a list"):
        paired.outcomes({"task": "a-v3"}, "run x")


def test_bootstrap_success_weights_tasks_equally_and_resamples_seeds_then_scenes():
    # task a: 2 scenes, both won; task b: 4 scenes, all lost -> 0.5 with tasks weighted equally (not 2/6)
    s = paired.bootstrap_success([_run({"a-v3": [1, 1], "b-v3": [0, 0, 0, 0]})])
    assert s["mean"] == 0.5 and s["ci95"] == [0.5, 0.5]  # constant within each task: nothing to resample
    assert s["n_seeds"] == 1 and s["n_episodes"] == 6 and s["per_seed"] == [0.5]
    # each seed constant within itself: only the seed draw varies, so replicates are k/3 for k = 0..3
    runs = [_run({"a-v3": [v] * 5, "b-v3": [v] * 5}) for v in (1, 0, 0)]
    s = paired.bootstrap_success(runs, n_boot=2000)
    assert s["mean"] == pytest.approx(1 / 3) and s["per_seed"] == [1.0, 0.0, 0.0]
    assert s["ci95"] == pytest.approx([0.0, 1.0])
    boot = paired._bootstrap(*paired._array(runs, paired._layout(runs)[1]), n_boot=2000, seed=0)
    assert set(np.round(boot * 3, 9)) == {0.0, 1.0, 2.0, 3.0}


def test_the_bootstrap_interval_contains_the_mean_shrinks_with_more_scenes_and_is_seeded():
    few, many = _random_runs(4, 10, 0.5, seed=1), _random_runs(4, 160, 0.5, seed=1)
    widths = []
    for runs in (few, many):
        s = paired.bootstrap_success(runs)
        assert s["ci95"][0] < s["mean"] < s["ci95"][1]
        assert s["mean"] == pytest.approx(np.mean(s["per_seed"]))
        widths.append(s["ci95"][1] - s["ci95"][0])
    assert widths[1] < 0.5 * widths[0]
    assert paired.bootstrap_success(few, seed=3) == paired.bootstrap_success(few, seed=3)
    assert paired.bootstrap_success(few, seed=3)["ci95"] != paired.bootstrap_success(few, seed=4)["ci95"]


def test_an_arm_against_itself_differs_by_exactly_zero():
    runs = _random_runs(5, 12, 0.6, seed=2)
    c = paired.paired_comparison(runs, [dict(r) for r in runs])
    assert c["difference"]["mean"] == 0.0 and c["difference"]["ci95"] == [0.0, 0.0]
    assert c["difference"]["per_seed"] == [0.0] * 5 and c["unit"] == "seeds"
    assert c["t_test"]["p"] == 1.0 and c["t_test"]["t"] is None  # zero variance, zero mean
    assert c["sign_flip"] == {"p": 1.0, "n": 5, "n_nonzero": 0, "exact": True}
    assert c["a"] == c["b"]


@pytest.mark.parametrize("n", [3, 5, 6])
def test_a_gain_in_every_seed_reaches_the_smallest_sign_flip_p(n):
    runs_a = _random_runs(n, 20, 0.5, seed=n)
    # +0.2 in every seed (4 of 20 scenes per task): identical per-seed differences, zero variance
    same = paired.paired_comparison(runs_a, [_plus(r, 4) for r in runs_a])
    assert same["difference"]["per_seed"] == pytest.approx([0.2] * n)
    lo, hi = same["difference"]["ci95"]  # scenes are still resampled: 4 of 20 gained is not always 4 of 20 drawn
    assert same["difference"]["mean"] == pytest.approx(0.2) and 0.0 < lo < 0.2 < hi
    assert same["sign_flip"]["p"] == 2 / 2 ** n and same["sign_flip"]["exact"]
    assert same["t_test"]["p"] is None and same["t_test"]["t"] is None  # no spread: undefined, not p = 0
    # 0.15 / 0.20 / 0.25 in turn: still positive in every seed, now with a seed-to-seed spread
    varied = paired.paired_comparison(runs_a, [_plus(r, 3 + k % 3) for k, r in enumerate(runs_a)])
    assert varied["sign_flip"]["p"] == 2 / 2 ** n
    assert varied["t_test"]["p"] < 0.05 and varied["t_test"]["t"] > 0 and varied["t_test"]["df"] == n - 1
    lo, hi = varied["difference"]["ci95"]
    assert 0.0 < lo <= varied["difference"]["mean"] <= hi


def test_exact_sign_flip_p_matches_brute_force_enumeration_and_monte_carlo_agrees():
    rng = np.random.default_rng(7)
    for n in (1, 2, 7, 11):
        units = rng.integers(-6, 9, size=n)  # multiples of 1/20 (many ties), zeros included
        diffs = units / 20
        obs = abs(int(units.sum()))
        hits = sum(abs(int(np.dot(signs, units))) >= obs for signs in itertools.product((1, -1), repeat=n))
        got = paired.sign_flip_test(diffs)
        assert got["exact"] and got["p"] == pytest.approx(hits / 2 ** n, abs=1e-12), (n, units)
    diffs = rng.normal(0.05, 0.1, size=14)
    exact = paired.sign_flip_test(diffs)
    mc = paired.sign_flip_test(diffs, exact_max=5, n_mc=200_000, seed=1)
    assert exact["exact"] and not mc["exact"] and mc["n"] == 14
    assert mc["p"] == pytest.approx(exact["p"], abs=0.006)
    assert paired.sign_flip_test(diffs, exact_max=5, n_mc=1000, seed=1) == paired.sign_flip_test(
        diffs, exact_max=5, n_mc=1000, seed=1)


def test_t_test_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    for n in (2, 3, 6, 12, 40):
        diffs = rng.normal(0.05, 0.1, size=n)
        ours = paired.paired_t_test(diffs)
        ref = stats.ttest_1samp(diffs, 0.0)
        assert ours["t"] == pytest.approx(ref.statistic, rel=1e-10) and ours["df"] == n - 1
        assert ours["p"] == pytest.approx(ref.pvalue, rel=1e-8, abs=1e-14)
        ci = ref.confidence_interval(0.95)
        assert ours["ci95"] == pytest.approx([ci.low, ci.high], rel=1e-9)
    assert paired.paired_t_test([0.3]) == {"mean": 0.3, "t": None, "df": None, "p": None, "ci95": None, "n": 1}
    # two seeds that moved by the same amount, up to float rounding of their means: no spread, no p
    assert paired.paired_t_test([0.3 - 0.375, -0.075])["p"] is None


def test_runs_that_do_not_pair_up_are_refused_naming_the_seed():
    runs = _random_runs(3, 4, 0.5, seed=0)
    other = [dict(r) for r in runs]
    other[1] = {(t, e, s + 1): v for (t, e, s), v in other[1].items()}  # seed index 1 on other scenes
    with pytest.raises(StudyError, match=r"seed index 1: .*different scenes \(16 keys differ\)"):
        paired.bootstrap_difference(runs, other)
    with pytest.raises(StudyError, match="3 runs in arm a but 2 in arm b"):
        paired.bootstrap_difference(runs, runs[:2])
    with pytest.raises(StudyError, match="seed index 2: tasks"):
        paired.bootstrap_success([*runs[:2], _run({"a-v3": [1, 0]})])


def test_one_seed_is_tested_over_its_scenes():
    (run,) = _random_runs(1, 30, 0.4, seed=5)
    c = paired.paired_comparison([run], [_plus(run, 6)])
    assert c["unit"] == "scenes" and c["t_test"]["n"] == 60 and c["sign_flip"]["n_nonzero"] == 12
    assert c["sign_flip"]["p"] == 2 / 2 ** 12 and c["difference"]["mean"] == pytest.approx(0.2)
    assert c["difference"]["ci95"][0] > 0.0


def _study(tmp_path, arms: dict[str, list[dict[str, list[int]]]]) -> tuple[list[str], list[str]]:
    paths, names = [], []
    for arm, seeds in arms.items():
        for k, pattern in enumerate(seeds):
            d = tmp_path / arm / f"seed{k}" / "eval"
            d.mkdir(parents=True)
            (d / "episodes.json").write_text(json.dumps(_episodes(pattern)))
            paths.append(str(d))
            names.append(arm)
    return paths, names


def test_vpdd_eval_compare_paired_end_to_end(tmp_path, capsys):
    base = [{"a-v3": [1, 0, 0, 0, 1], "b-v3": [0, 0, 1, 0, 0]}, {"a-v3": [0, 0, 1, 0, 1], "b-v3": [1, 0, 0, 0, 0]},
            {"a-v3": [1, 1, 0, 0, 0], "b-v3": [0, 0, 0, 0, 1]}]
    new = [{t: [1 if i == 3 else v for i, v in enumerate(oks)] for t, oks in s.items()} for s in base]  # +0.2
    paths, names = _study(tmp_path, {"base": base, "new": new})
    out, raw = tmp_path / "table.md", tmp_path / "study.json"
    assert main(["eval", "compare", "--paired", *paths, "--names", *names, "--out", str(out),
                 "--json", str(raw), "--n-boot", "500"]) == 0
    printed = capsys.readouterr().out
    assert out.read_text().strip() == printed.strip()
    assert "| arm | seeds | mean success (95% bootstrap CI) | minus base (95% bootstrap CI) |" in printed
    assert "| base | 3 | 0.300 [" in printed and "| - | - | - | - |" in printed
    assert re.search(r"\| new \| 3 \| 0\.500 \[0\.\d{3}, 0\.\d{3}\] \| \+0\.200 \[\+0\.\d{3}, \+0\.\d{3}\] \| "
                     r"- \(no spread\) \| 0\.250 \(exact\) \| 3 seeds \|", printed)
    assert "10 episodes per seed" in printed and "0.250 for 3 seeds" in printed
    study = json.loads(raw.read_text())
    assert study["reference"] == "base" and study["arms"]["new"]["runs"] == paths[3:]
    assert study["arms"]["new"]["against_reference"]["sign_flip"]["p"] == 0.25


def test_vpdd_eval_compare_paired_refuses_runs_that_do_not_pair(tmp_path, capsys):
    pattern = {"a-v3": [1, 0], "b-v3": [0, 1]}
    paths, names = _study(tmp_path, {"base": [pattern, pattern], "new": [pattern, {"a-v3": [1, 0, 1]}]})
    assert main(["eval", "compare", "--paired", *paths, "--names", *names]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vpdd eval compare: error: arm 'new' run 2 (") and "new/seed1/eval" in err
    assert main(["eval", "compare", "--paired", *paths[:3], "--names", *names[:3]]) == 2
    assert "arm 'new' has 1 runs but the reference 'base' has 2" in capsys.readouterr().err
    assert main(["eval", "compare", "--paired", paths[0], str(tmp_path / "nope"), "--names", "base", "new"]) == 2
    assert "nope: no such file (expected an eval folder" in capsys.readouterr().err
    assert main(["eval", "compare", "--paired", *paths]) == 2
    assert "--paired needs --names" in capsys.readouterr().err
    assert main(["eval", "compare", paths[0], "--json", str(tmp_path / "x.json")]) == 2
    assert "--json needs --paired" in capsys.readouterr().err


def test_vpdd_eval_compare_without_paired_still_tables_metrics_files(tmp_path, capsys):
    from vpdd.eval.closed_loop import EpisodeResult, summarise

    for name, oks in (("ref", [True, False]), ("alt", [True, True])):
        m = summarise([EpisodeResult("a-v3", 0, k, 1000 + k, ok, 10, 3) for k, ok in enumerate(oks)], ["a-v3"], [0])
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(m))
    files = [str(tmp_path / name / "metrics.json") for name in ("ref", "alt")]
    assert main(["eval", "compare", *files]) == 0
    printed = capsys.readouterr().out
    assert "| ref | 0.500 [" in printed and "| alt | 1.000 [" in printed
