"""The pre-training study: its spec is refused early when malformed, and a tiny real grid (synthetic episodes,
real training, real Meta-World evaluation) runs, resumes, refuses changed settings and reports paired numbers."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from vpdd.config import ConfigError
from vpdd.study.spec import Cell, load_spec, plan


def _spec(tmp_path, **over) -> dict:
    data = {"name": "tiny", "arms": [{"name": "none", "pretrain": None},
                                     {"name": "video", "pretrain": {"overrides": {"pretrain.steps": 4}}}],
            "demos": [1, 2], "seeds": {1: 2, 2: 1}}
    data.update(over)
    return data


def _write(tmp_path, data, name="study.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_plan_is_seed_major_small_demos_first_with_all_arms_together(tmp_path):
    spec = load_spec(_write(tmp_path, _spec(tmp_path, demos=[3, 1], seeds={1: 3, 3: 2})))
    cells = plan(spec)
    assert cells[:4] == [Cell("none", 1, 0), Cell("video", 1, 0), Cell("none", 3, 0), Cell("video", 3, 0)]
    assert len(cells) == 2 * (3 + 2)
    assert cells[-2:] == [Cell("none", 1, 2), Cell("video", 1, 2)]  # demos 3 has only seeds 0, 1


@pytest.mark.parametrize("change, message", [
    ({"seeds": {1: 2}}, "seeds="),
    ({"demos": [1, 1]}, "demos="),
    ({"arms": [{"name": "none", "pretrain": None}]}, "at least two arms"),
    ({"arms": [{"name": "Bad Name", "pretrain": None}, {"name": "b", "pretrain": None}]}, "arms[0].name='Bad Name'"),
    ({"reference": "nope"}, "reference='nope'"),
    ({"colour": 1}, "unknown keys ['colour']"),
    ({"arms": [{"name": "a", "policy": "bc", "pretrain": {"corpus": "x"}}, {"name": "b"}]}, "null for a bc arm"),
    ({"arms": [{"name": "a", "policy": "cnn"}, {"name": "b"}]}, "arms[0].policy='cnn': expected vpdd or bc"),
    ({"arms": [{"name": "a", "pretrain": {"steps": 3}}, {"name": "b", "pretrain": None}]}, "arms[0].pretrain"),
    ({"probe": {"states_per_episode": 0}}, "probe.states_per_episode=0: expected an integer > 0"),
    ({"probe": {"windows": 2}}, "probe={'windows': 2}"),
])
def test_a_malformed_spec_is_refused_naming_the_key(tmp_path, change, message):
    with pytest.raises(ConfigError) as err:
        load_spec(_write(tmp_path, _spec(tmp_path, **change)))
    assert message in str(err.value) and "study.yaml" in str(err.value)


def test_an_override_of_a_key_the_params_lack_is_refused(tmp_path, synthetic):
    from vpdd.study.runner import StudyRunner

    params = synthetic.write_params(tmp_path / "params.yaml")
    spec = load_spec(_write(tmp_path, _spec(tmp_path, params=str(params), finetune={"finetune.stepz": 3})))
    runner = StudyRunner(spec, tmp_path / "out", tmp_path / "results")
    with pytest.raises(ConfigError, match="finetune.stepz: no key 'stepz'"):
        runner.job(plan(spec)[0])


def test_a_tiny_study_runs_resumes_refuses_changed_settings_and_reports(trained, synthetic, tmp_path, tool_env,
                                                                      capsys):
    params = synthetic.write_params(tmp_path / "params.yaml")
    data = _spec(tmp_path, params=str(params), tokens=str(trained["tokens"]), tokenizer=str(trained["tokenizer"]),
                 robot=str(trained["robot"]), task_video="", jobs=1, bootstrap=200,
                 video={"episodes_per_task": 1, "windows_per_episode": 1, "keep_failures": True,
                        "examples_per_task": 1},
                 probe={"episodes_per_task": 1, "states_per_episode": 3, "keep_failures": True},
                 finetune={"finetune.steps": 4, "finetune.checkpoint_every": 2},
                 bc={"bc.steps": 4, "bc.checkpoint_every": 2, "bc.eval_every": 2, "bc.heldout_steps": 4},
                 eval={"eval.episodes_per_task": 2, "eval.seeds": [0], "eval.max_steps": 4, "eval.n_envs": 2,
                       "eval.videos_per_task": 0, "eval.sampling_stride": 5, "eval.execute_steps": 2})
    spec_path = _write(tmp_path, data)
    out, results = tmp_path / "out", tmp_path / "results"
    base = ["vpdd", "study"]

    def vpdd(*args):
        return subprocess.run([*base, *args, str(spec_path), "--out", str(out), "--results", str(results)],
                              capture_output=True, text=True, env=tool_env, timeout=900)

    data["arms"].append({"name": "bc", "policy": "bc", "pretrain": None})
    _write(tmp_path, data)
    first = vpdd("run", "--max-cells", "3")
    assert first.returncode == 0, first.stderr[-3000:]
    state = json.loads((results / "state.json").read_text())
    assert state["done"] == 3 and state["cells"] == 9 and len(state["pending"]) == 6
    bc = json.loads((results / "cells/bc/demos1/seed0/cell.json").read_text())
    assert bc["finetune"]["steps"] == 4 and bc["episodes"] == 4
    assert yaml.safe_load((out / "cells/bc/demos1/seed0/params.yaml").read_text())["finetune"]["demos_per_task"] == 1
    arm = json.loads((results / "pretrain" / "video.json").read_text())
    assert arm["steps"] == 4 and arm["video"]["predicted"]["psnr"] > 0 and "copy_last_acc" in arm["video"]["tokens"]
    cell = json.loads((results / "cells/video/demos1/seed0/cell.json").read_text())
    assert cell["finetune"]["steps"] == 4 and cell["episodes"] == 4  # 2 tasks x 2 scenes
    assert yaml.safe_load((out / "cells/video/demos1/seed0/params.yaml").read_text())["finetune"]["demos_per_task"] == 1
    assert yaml.safe_load((out / "cells/none/demos1/seed0/params.yaml").read_text())["finetune"][
        "init_from_pretrained"] is False
    mtime = (out / "cells/none/demos1/seed0/cell.json").stat().st_mtime_ns

    from vpdd.study.report import write_report
    from vpdd.study.runner import StudyRunError, StudyRunner

    lines: list[str] = []
    runner = StudyRunner(load_spec(spec_path), out, results, echo=lines.append)
    runner.run()
    assert "3 of 9 cells done; running 6" in lines[0]
    assert (out / "cells/none/demos1/seed0/cell.json").stat().st_mtime_ns == mtime  # done cells are not rerun
    # the held-out action probe: every cell (BC too) on the same states; the first run's 3 are not scored again
    assert "probe: scoring 6 cells on the same held-out states" in lines
    probes = [json.loads(p.read_text()) for p in sorted(results.glob("cells/*/demos*/seed*/probe.json"))]
    assert len(probes) == 9 and {p["action_l1"]["states"] for p in probes} == {6}  # 2 tasks x 1 episode x 3
    assert all(0 < p["action_l1"]["mean"] < 2 and p["action_l1"]["discretization"] < p["action_l1"]["mean"]
               for p in probes)
    by_cell = {(p["arm"], p["demos"], p["seed"]): p["action_l1"] for p in probes}
    assert by_cell[("none", 1, 0)]["discretization"] == by_cell[("video", 1, 0)]["discretization"]  # same states
    summary = write_report(load_spec(spec_path), results)
    rows = {(r["arm"], r["demos"]): r for r in summary["cells"]}
    assert rows[("none", 1)]["seeds"] == [0, 1] and rows[("video", 2)]["seeds"] == [0]
    diff = rows[("video", 1)]["minus_reference"]
    assert diff["unit"] == "seeds" and diff["seeds"] == [0, 1]
    lo, hi = diff["difference"]["ci95"]
    assert lo <= diff["difference"]["mean"] <= hi
    assert rows[("none", 1)]["minus_reference"] is None and rows[("bc", 1)]["minus_reference"]["seeds"] == [0, 1]
    assert "| video | 1 | 2 |" in (results / "table.md").read_text()
    assert rows[("bc", 1)]["action_l1"] == pytest.approx(sum(
        json.loads((results / f"cells/bc/demos1/seed{k}/probe.json").read_text())["action_l1"]["mean"]
        for k in (0, 1)) / 2)
    assert (results / "success.png").stat().st_size > 1000
    plot = json.loads((results / "success.json").read_text())
    assert [r["demos"] for r in plot] == [1, 2] and plot[0]["none"] == rows[("none", 1)]["success"]["mean"]
    from vpdd.cli import main

    assert main(["study", "status", str(spec_path), "--out", str(out), "--results", str(results)]) == 0
    assert capsys.readouterr().out.strip().endswith("9 done")

    data["finetune"]["finetune.steps"] = 5  # changed settings: the finished cells no longer belong to this study
    _write(tmp_path, data)
    with pytest.raises(StudyRunError, match="were run with other settings"):
        StudyRunner(load_spec(spec_path), out, results).run()
