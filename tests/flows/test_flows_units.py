"""The flows folder without a server: module names, prefect.yaml entrypoints, command building, tables."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

FLOWS = Path(__file__).resolve().parents[2] / "flows"


def _flow_module(name: str):
    """flows/<name>.py loaded as Prefect loads it (flows/ on sys.path, for its sibling imports)."""
    sys.path.insert(0, str(FLOWS))
    try:
        spec = importlib.util.spec_from_file_location(name, FLOWS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(FLOWS))


@pytest.fixture(scope="module")
def dvc_tasks():
    yield from _flow_module("dvc_tasks")


def test_flow_modules_shadow_no_installed_or_standard_module():
    """flows/ lands on sys.path when Prefect loads an entrypoint; none of its files may hide a real module."""
    assert not (FLOWS / "__init__.py").exists()
    names = [p.stem for p in FLOWS.glob("*.py")]
    code = ("import importlib.util, sys, json; names = json.loads(sys.argv[1]); "
            "print(json.dumps([n for n in names if n in sys.stdlib_module_names or importlib.util.find_spec(n)]))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(names)], capture_output=True, text=True,
                         cwd="/", check=True).stdout
    assert json.loads(out) == [], f"flows/ modules that shadow real modules: {out}"


def test_prefect_yaml_entrypoints_are_the_served_flows():
    from prefect.flows import load_flow_from_entrypoint

    root = FLOWS.parent
    doc = yaml.safe_load((root / "prefect.yaml").read_text())
    entry = {d["entrypoint"] for d in doc["deployments"]}
    names = set()
    for e in sorted(entry):
        path, func = e.split(":")
        names.add(load_flow_from_entrypoint(f"{root / path}:{func}").name)
    assert names == {"vpdd-data", "vpdd-tokenize", "vpdd-pretrain", "vpdd-finetune", "vpdd-evaluate", "vpdd-bc",
                     "vpdd-bench-kernels", "vpdd-pipeline", "vpdd-study"}
    for d in doc["deployments"]:
        assert d["concurrency_limit"] == 1 and "dvc" in d["tags"], d["name"]
    assert "set_working_directory" in str(doc["pull"])


@pytest.fixture(scope="module")
def artifacts_tasks(dvc_tasks):
    yield from _flow_module("artifacts_tasks")


@pytest.fixture(scope="module")
def pipeline_flow(dvc_tasks):
    yield from _flow_module("pipeline_flow")


def test_the_flow_factory_keeps_names_entrypoints_and_parameters(pipeline_flow, monkeypatch):
    """One factory makes the DVC flows; what Prefect users see (flow names, the entrypoint a deployment
    records, the parameters and their defaults) is what the five hand-written flow files had."""
    monkeypatch.chdir(FLOWS.parent)
    stage_params = {"overrides": None, "exp_name": None, "force": False, "fetch": True, "push": False}
    expected = {"vpdd-data": stage_params, "vpdd-tokenize": stage_params, "vpdd-pretrain": stage_params,
                "vpdd-finetune": stage_params, "vpdd-evaluate": stage_params, "vpdd-bc": stage_params,
                "vpdd-pipeline": {"overrides": None, "exp_name": None, "targets": None, "force": False,
                                  "fetch": True, "push": False}}
    assert {f.name for f in pipeline_flow.FLOWS} == set(expected)
    for f in pipeline_flow.FLOWS:
        attr = f.name.removeprefix("vpdd-") + "_flow"
        assert getattr(pipeline_flow, attr) is f
        assert f.to_deployment(name="t").entrypoint == f"flows/pipeline_flow.py:{attr}"
        props = f.parameters.properties
        assert {k: v.get("default") for k, v in props.items()} == expected[f.name], f.name
        assert list(props) == list(expected[f.name]) and f.description


def test_dvc_command_is_repro_without_overrides_and_a_named_experiment_with(dvc_tasks):
    assert dvc_tasks.dvc_command(["tokenize"], None, None, False) == ["dvc", "repro", "tokenize"]
    assert dvc_tasks.dvc_command([], [], "x", True) == ["dvc", "repro", "-f"]
    assert dvc_tasks.dvc_command(["pretrain"], ["pretrain.steps=10", "model.video.dim=32"], "small", False) == [
        "dvc", "exp", "run", "-n", "small", "-S", "pretrain.steps=10", "-S", "model.video.dim=32", "pretrain"]
    with pytest.raises(ValueError, match="key=value"):
        dvc_tasks.dvc_command(["pretrain"], ["pretrain.steps"], None, False)


def test_eval_rows_read_the_metrics_file_of_vpdd_eval(artifacts_tasks, tmp_path):
    """The shape `vpdd eval` writes to results/eval/metrics.json, read from a hand-written file."""
    doc = {"mean_success": 0.6, "ci95": [0.35, 0.81], "episodes": 15, "seed": 3,
           "tasks": {"drawer-close-v3": {"success": 0.8, "ci95": [0.38, 0.96], "episodes": 10, "successes": 8},
                     "reach-v3": {"success": 0.2, "ci95": [0.04, 0.62], "episodes": 5, "successes": 1}}}
    (tmp_path / "metrics.json").write_text(json.dumps(doc))
    rows = artifacts_tasks.eval_rows(json.loads((tmp_path / "metrics.json").read_text()))
    assert rows == [
        {"task": "drawer-close-v3", "success": 0.8, "ci95_low": 0.38, "ci95_high": 0.96, "successes": 8,
         "episodes": 10},
        {"task": "reach-v3", "success": 0.2, "ci95_low": 0.04, "ci95_high": 0.62, "successes": 1, "episodes": 5},
        {"task": "mean", "success": 0.6, "ci95_low": 0.35, "ci95_high": 0.81, "successes": 9, "episodes": 15},
    ]


def test_eval_rows_accept_older_shapes_and_ignore_files_without_tasks(artifacts_tasks):
    nested = artifacts_tasks.eval_rows({"per_task": {"a": {"success_rate": 0.5, "episodes": 10},
                                               "b": {"success_rate": 1.0, "episodes": 10}}})
    assert nested[-1] == {"task": "mean", "success": 0.75, "ci95_low": None, "ci95_high": None, "successes": None,
                          "episodes": 20}
    flat = artifacts_tasks.eval_rows({"tasks": {"a": 0.2}, "mean_success_rate": 0.2})
    assert [(r["task"], r["success"]) for r in flat] == [("a", 0.2), ("mean", 0.2)]
    assert artifacts_tasks.eval_rows({"loss": 1.0}) == [] and artifacts_tasks.eval_rows({"tasks": [1, 2]}) == []


def test_artifact_keys_are_valid(dvc_tasks):
    assert dvc_tasks.artifact_key("metrics", "train_tokenizer") == "metrics-train-tokenizer"
    assert dvc_tasks.artifact_key("file", "results/tokenizer/recon_grid.png") == "file-results-tokenizer-recon-grid-png"


@pytest.fixture(scope="module")
def bench_flow(dvc_tasks):
    yield from _flow_module("bench_flow")


def test_bench_flow_builds_the_command_and_a_row_per_case(bench_flow, repo_root):
    assert bench_flow.bench_argv("auto", False, None, None, None) == ["vpdd", "bench", "kernels", "--device", "auto"]
    assert bench_flow.bench_argv("cpu", True, ["loss"], ["--repeats", "2"], "x.json") == [
        "vpdd", "bench", "kernels", "--device", "cpu", "--quick", "--ops", "loss", "--out", "x.json", "--repeats", "2"]
    with pytest.raises(ValueError, match="device='tpu'"):
        bench_flow.bench_argv("tpu", False, None, None, None)
    committed = repo_root / "benchmarks/results/kernels_cpu.json"
    if committed.is_file():  # the results file the benchmark writes, as committed
        record = json.loads(committed.read_text())
        rows = bench_flow.bench_rows(record)
        assert len(rows) == len(record["results"]) and set(rows[0]) == set(bench_flow.COLUMNS)
        assert "kernels_cpu.json" in bench_flow.bench_description(record, "benchmarks/results/kernels_cpu.json")


@pytest.fixture(scope="module")
def study_flow(dvc_tasks):
    yield from _flow_module("study_flow")


def test_study_flow_builds_the_command_reads_progress_and_documents_its_parameters(study_flow, repo_root):
    assert study_flow.study_argv("s.yaml", None, None, None, None) == ["vpdd", "study", "run", "s.yaml"]
    assert study_flow.study_argv("s.yaml", [1, 3], ["none", "robot"], 4, 2) == [
        "vpdd", "study", "run", "s.yaml", "--demos", "1", "3", "--arms", "none", "robot", "--max-cells", "4",
        "--jobs", "2"]
    assert study_flow.progress_of("[3/12] cells/none/demos1/seed0: success 0.250 (...)") == 25.0
    assert study_flow.progress_of("arm robot: pre-training 2400 steps") is None
    assert study_flow.study_name(study_flow.DEFAULT_SPEC, repo_root) == "pretraining"
    with pytest.raises(study_flow.StageFailed, match="nope.yaml"):
        study_flow.study_name("nope.yaml", repo_root)
    for name, prop in study_flow.study_flow.parameters.properties.items():
        assert prop.get("description"), name


def test_vpdd_serve_needs_a_checkout_with_flows(tmp_path, tool_env):
    proc = subprocess.run(["vpdd", "serve", "--repo", str(tmp_path)], capture_output=True, text=True, env=tool_env)
    assert proc.returncode == 2 and "no flows to serve" in proc.stderr


MATRIX_DVC = """
stages:
  gen:
    cmd: echo gen
    outs: [build/gen]
  bench_inspect:
    matrix:
      benchmark: ${extra_benchmarks}
    cmd: echo ${item.benchmark}
    deps: [build/gen]
    outs: ["build/${item.benchmark}/data"]
    metrics:
      - results/${item.benchmark}/data.json: {cache: false}
  bench_predict:
    matrix:
      benchmark: ${extra_benchmarks}
    cmd: echo predict
    deps: ["build/${item.benchmark}/data"]
    metrics:
      - results/${item.benchmark}/predict.json: {cache: false}
"""


def _matrix_repo(tmp_path: Path, benchmarks: list[str]) -> Path:
    (tmp_path / "dvc.yaml").write_text(MATRIX_DVC)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"extra_benchmarks": benchmarks}))
    return tmp_path


def test_flows_see_matrix_stages_as_dvc_names_them(dvc_tasks, artifacts_tasks, tmp_path):
    """`bench_predict@rlbench` (what DVC prints) is a stage; a matrix stage's own name means all of its
    entries; metrics paths come with `${item...}` resolved, so the metrics table finds the real file."""
    repo = _matrix_repo(tmp_path, ["rlbench", "other"])
    assert dvc_tasks.resolve_targets(["bench_predict@rlbench"], repo) == ["bench_predict@rlbench"]
    assert dvc_tasks.resolve_targets(["bench_predict", "gen"], repo) == [
        "bench_predict@rlbench", "bench_predict@other", "gen"]
    dvc_tasks.require_stages(["bench_predict@rlbench", "bench_inspect"], repo)
    with pytest.raises(dvc_tasks.StageFailed, match="nope"):
        dvc_tasks.require_stages(["nope"], repo)
    known = dvc_tasks.stage_names(repo)
    assert known["bench_inspect@rlbench"].metrics == ["results/rlbench/data.json"]
    assert artifacts_tasks.expand_names(["bench_inspect", "gen", "gone"], known) == [
        "bench_inspect@rlbench", "bench_inspect@other", "gen"]
    from vpdd.lineage import upstream_stages

    assert upstream_stages(known, ["bench_predict@rlbench"]) == ["gen", "bench_inspect@rlbench",
                                                                 "bench_predict@rlbench"]
    # No benchmarks: the matrix stages have no entries, and naming them is not an error.
    empty = _matrix_repo(tmp_path, [])
    assert dvc_tasks.resolve_targets(["bench_predict"], empty) == []


def test_a_failed_experiment_gives_back_params_yaml(dvc_tasks, tmp_path):
    """`dvc exp run -S` rewrites params.yaml (bad value in, header out); after a failure the flow puts back
    the file it found, so the next plain run does not build with the bad value."""
    committed = "# Composed from conf/ by `vpdd config compose`\npretrain:\n  steps: 10\n"
    (tmp_path / "params.yaml").write_text(committed)
    snapshot = dvc_tasks.params_snapshot(tmp_path)
    (tmp_path / "params.yaml").write_text("pretrain:\n  steps: -5\n")  # what DVC leaves behind
    assert dvc_tasks.restore_params(tmp_path, snapshot) is True
    assert (tmp_path / "params.yaml").read_text() == committed
    assert dvc_tasks.restore_params(tmp_path, snapshot) is False  # unchanged: nothing to do


def test_flow_parameters_have_descriptions_that_name_their_type(pipeline_flow):
    for f in pipeline_flow.FLOWS:
        for name, prop in f.parameters.properties.items():
            assert prop.get("description"), (f.name, name)
            if "anyOf" in prop:
                assert prop["description"].startswith(("list of strings", "string")), (f.name, name)


@pytest.fixture(scope="module")
def media_tasks(dvc_tasks):
    yield from _flow_module("media_tasks")


def test_media_cards_embed_images_and_browser_playable_video(media_tasks, tmp_path):
    """A card carries the file itself (frozen to the run): a PNG as a data URI, an MPEG-4 Part 2 mp4 as an
    inline VP9 WebM player; a file too large to embed points at a content-addressed copy."""
    import base64
    import re

    import av
    import numpy as np
    from PIL import Image

    from vpdd.data.video import write_video

    png = tmp_path / "results/pretrain/samples.png"
    png.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png)
    card = media_tasks.media_markdown(tmp_path, png, "stage `pretrain`")
    uri = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    assert f"![results/pretrain/samples.png]({uri})" in card
    assert "`history`" in card and "`prediction`" in card  # the figure's caption
    mp4 = write_video(tmp_path / "results/eval/videos/reach-v3/seed0_ep0_success.mp4",
                      np.random.default_rng(0).integers(0, 255, (6, 16, 16, 3), dtype=np.uint8))
    card = media_tasks.media_markdown(tmp_path, mp4, "rollout video")
    m = re.search(r'<video controls[^>]* src="data:video/webm;base64,([^"]+)"></video>', card)
    assert m, card[:300]
    webm = tmp_path / "x.webm"
    webm.write_bytes(base64.b64decode(m[1]))
    with av.open(str(webm)) as c:
        assert c.streams.video[0].codec_context.name in ("vp9", "libvpx-vp9")
        times = [float(f.time) for f in c.decode(video=0)]
    assert len(times) == 6 and times == sorted(set(times)) and abs(times[-1] - 5 / 20) < 1e-6  # 20 fps kept
    media_tasks.EMBED_LIMIT, limit = 10, media_tasks.EMBED_LIMIT
    try:
        card = media_tasks.media_markdown(tmp_path, png, "stage `pretrain`")
    finally:
        media_tasks.EMBED_LIMIT = limit
    copy = re.search(r"this run's copy: `([^`]+)`", card)[1]
    assert (tmp_path / copy).read_bytes() == png.read_bytes() and copy.startswith(".vpdd/artifacts/")
    assert oct((tmp_path / copy).stat().st_mode & 0o777) == "0o644"
    assert media_tasks.media_files(tmp_path / "results/eval") == [mp4]
