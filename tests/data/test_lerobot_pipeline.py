"""A LeRobot v3.0 dataset through ``dvc repro``: real git + DVC repository (tests/flows/tiny_pipeline.py) with
the project's stages, the robot data switched to the dataset by params alone (``data.robot.source=lerobot``):
import_robot_data -> tokenizer -> token cache -> pre-training -> fine-tuning -> closed-loop evaluation, and
the policy's lineage names the imported dataset."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.sim]

PROJECT = Path(__file__).resolve().parents[2]
LEROBOT = {"data.robot.source": "lerobot", "data.robot.lerobot.path": "lerobot_ds",
           # what conf/ interpolates from the source (the tiny repo has params.yaml, not conf/)
           "data.robot.episodes": "build/robot/lerobot", "data.robot.imports": ["lerobot"]}
EVAL = {"eval.episodes_per_task": 1, "eval.seeds": [0], "eval.max_steps": 8, "eval.n_envs": 1,
        "eval.videos_per_task": 1, "eval.sampling_stride": 5}


def _tiny():
    name = "vpdd_test_tiny_pipeline"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, PROJECT / "tests" / "flows" / "tiny_pipeline.py")
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


def _stage(name: str) -> dict:
    """A stage of the project's dvc.yaml without its deps on the project's source tree."""
    spec = dict(yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"][name])
    spec["deps"] = [d for d in spec.get("deps", []) if str(d).startswith(("data/", "build/", "models/", "${"))]
    return spec


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    from vpdd.data.lerobot_export import export_lerobot

    tp = _tiny()
    env = tp.tool_env()
    tmp = tmp_path_factory.mktemp("lerobot_pipeline")
    syn = tp._synthetic()
    dest = tp.make_repo(tmp / "repo", env, extra_stages={n: _stage(n) for n in ("import_robot_data", "evaluate")},
                        **EVAL)
    default_stages = tp.run(["dvc", "stage", "list"], dest, env)
    # the user's dataset: the synthetic demonstrations written in the LeRobot v3.0 layout
    export_lerobot(syn.write_robot_root(tmp / "demos"), dest / "lerobot_ds")
    syn.write_params(dest / "params.yaml", **EVAL, **LEROBOT)  # the params change
    tp.commit(dest, env, "train on a LeRobot dataset")
    first = tp.run(["dvc", "repro"], dest, env, timeout=900)
    second = tp.run(["dvc", "repro"], dest, env, timeout=300)
    return {"repo": dest, "env": env, "default_stages": default_stages, "first": first, "second": second}


def test_import_runs_only_when_the_source_is_lerobot(repo):
    assert "import_robot_data" not in repo["default_stages"]
    assert "import_robot_data@lerobot" in repo["first"]


def test_the_pipeline_trains_and_evaluates_on_the_imported_dataset(repo):
    root = repo["repo"]
    source = json.loads((root / "build/robot/lerobot/source.json").read_text())
    assert source["codebase_version"] == "v3.0" and source["episodes"] == 6
    index = json.loads((root / "build/robot/lerobot/index.json").read_text())
    assert {e["task"] for e in index["episodes"]} == {"reach-v3", "push-v3"}
    metrics = json.loads((root / "results/eval/metrics.json").read_text())
    assert metrics  # closed-loop Meta-World evaluation of the policy fine-tuned on the import
    lineage = json.loads((root / "models/policy/lineage.json").read_text())
    assert lineage["robot_data"]["content_sha256"] == source["content_sha256"]
    assert lineage["robot_data"]["path"] == str((root / "lerobot_ds").resolve())
    assert lineage["robot_data"]["store"] == "build/robot/lerobot"


def test_a_second_repro_does_nothing(repo):
    assert "Data and pipelines are up to date" in repo["second"] or "didn't change, skipping" in repo["second"]
    assert "Running stage" not in repo["second"]
