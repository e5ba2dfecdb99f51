"""Lineage with real git and real DVC: a small two-stage pipeline (token cache -> checkpoint) whose checkpoint
stage writes lineage.json and safetensors metadata through vpdd.lineage, as the policy stage will."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from vpdd import lineage

TOKENS_STAGE = """\
import pathlib
out = pathlib.Path("build/tokens"); out.mkdir(parents=True, exist_ok=True)
text = "".join(p.read_text() for p in sorted(pathlib.Path("data/raw").glob("*.txt")))
(out / "tokens.txt").write_text(text.upper())
"""
CHECKPOINT_STAGE = """\
import pathlib, yaml
import numpy as np
from safetensors.numpy import save_file
from vpdd.lineage import build_lineage, lineage_metadata, write_lineage

params = yaml.safe_load(open("params.yaml"))["train"]
out = pathlib.Path("models/policy"); out.mkdir(parents=True, exist_ok=True)
tokens = pathlib.Path("build/tokens/tokens.txt").read_bytes()
weights = np.frombuffer(tokens, dtype=np.uint8).astype(np.float32) + params["seed"]
record = build_lineage(out)               # repo from DVC_ROOT, stage from DVC_STAGE
write_lineage(out, record)
save_file({"w": weights}, str(out / "model.safetensors"), metadata=lineage_metadata(record))
"""
DVC_YAML = {
    "stages": {
        "tokenize": {"cmd": "python tokens_stage.py", "deps": ["tokens_stage.py", "data"], "outs": ["build/tokens"]},
        "policy": {"cmd": "python checkpoint_stage.py", "deps": ["checkpoint_stage.py", "build/tokens"],
                   "params": ["train"], "outs": ["models/policy"]},
    }
}
PARAMS = {"train": {"seed": 0, "steps": 3}, "kernel": {"impl": "auto"}}


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _commit(repo: Path, env: dict[str, str], msg: str) -> str:
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", msg], repo, env)
    return _run(["git", "rev-parse", "HEAD"], repo, env).strip()


def _data_md5(repo: Path) -> str:
    return yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]


def _lock_out(repo: Path, path: str, rev: str | None = None) -> str:
    text = (repo / "dvc.lock").read_text() if rev is None else subprocess.run(
        ["git", "show", f"{rev}:dvc.lock"], cwd=repo, capture_output=True, text=True, check=True).stdout
    return lineage.lock_outputs(yaml.safe_load(text))[path]["md5"]


@pytest.fixture(scope="module")
def history(tmp_path_factory, repo_root):
    """A repo with two data versions committed (v1, v2), each followed by `dvc repro`, then an experiment."""
    import os
    import sys

    repo = tmp_path_factory.mktemp("lineage") / "repo"
    (repo / "data/raw").mkdir(parents=True)
    for i in range(3):
        (repo / f"data/raw/episode_{i}.txt").write_text(f"episode {i} frames\n")
    (repo / "tokens_stage.py").write_text(TOKENS_STAGE)
    (repo / "checkpoint_stage.py").write_text(CHECKPOINT_STAGE)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (repo / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "VPDD_FLOW_RUN_ID": "flow-run-1"}
    env.pop("PREFECT__FLOW_RUN_ID", None)
    env.pop("VPDD_KERNEL_IMPL", None)
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "add", "-q", "data"]):
        _run(cmd, repo, env)
    h: dict = {"repo": repo, "env": env}
    h["data_commit_v1"] = _commit(repo, env, "data v1")
    _run(["dvc", "repro"], repo, env)
    h["v1"], h["lineage_v1"] = _data_md5(repo), json.loads((repo / "models/policy/lineage.json").read_text())
    h["tokens_v1"], h["policy_v1"] = _lock_out(repo, "build/tokens"), _lock_out(repo, "models/policy")
    h["commit_v1"] = _commit(repo, env, "policy from data v1")

    # Change one raw episode, re-pin, rebuild.
    (repo / "data/raw/episode_1.txt").write_text("episode 1 frames, re-recorded\n")
    _run(["dvc", "add", "-q", "data"], repo, env)
    _run(["dvc", "repro"], repo, {**env, "VPDD_FLOW_RUN_ID": "flow-run-2"})
    h["v2"], h["lineage_v2"] = _data_md5(repo), json.loads((repo / "models/policy/lineage.json").read_text())
    h["policy_v2"] = _lock_out(repo, "models/policy")
    h["commit_v2"] = _commit(repo, env, "data v2 and its policy")

    # A DVC experiment on data v2 with another seed.
    _run(["dvc", "exp", "run", "-n", "seed1", "-S", "train.seed=1"], repo, env)
    h["policy_exp"] = _lock_out(repo, "models/policy")
    h["lineage_exp"] = json.loads((repo / "models/policy/lineage.json").read_text())
    return h


def test_the_checkpoint_records_data_upstream_hashes_params_and_run(history):
    rec, repo = history["lineage_v1"], history["repo"]
    assert rec["data"]["md5"] == history["v1"] and rec["data"]["md5"].endswith(".dir")
    assert rec["data"]["nfiles"] == 3 and rec["data"]["dvc_file"] == "data.dvc"
    assert rec["artifacts"]["token_cache"] == {"path": "build/tokens", "md5": history["tokens_v1"], "stage": "tokenize"}
    assert rec["artifacts"]["tokenizer"] is None and rec["artifacts"]["pretrain"] is None
    assert rec["output"] == "models/policy" and rec["stage"] == "policy"
    # the stage ran on the commit that pinned data v1
    assert rec["git"]["commit"] == history["data_commit_v1"]
    # params: the stage's params section, canonical JSON, sha256
    canonical = json.dumps({"train": PARAMS["train"]}, sort_keys=True, separators=(",", ":"))
    assert rec["params"] == {"file": "params.yaml", "keys": ["train"],
                             "sha256": hashlib.sha256(canonical.encode()).hexdigest()}
    assert rec["kernel_impl"] == "torch"  # auto on a CPU
    assert rec["prefect_flow_run_id"] == "flow-run-1"
    assert rec["versions"]["dvc"] and rec["versions"]["vpdd"]
    assert rec["experiment"] is None
    # the same record travels inside the weights file
    meta = lineage.safetensors_metadata(repo / "models/policy/model.safetensors")
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    assert lineage.lineage_from_metadata(meta) == history["lineage_exp"]
    assert meta["vpdd.lineage.data.md5"] == history["v2"] and meta["vpdd.lineage.stage"] == "policy"


def test_new_data_version_gives_a_new_lineage_and_the_old_policy_keeps_the_old(history):
    v1, v2 = history["v1"], history["v2"]
    assert v1 != v2
    assert history["lineage_v2"]["data"]["md5"] == v2
    assert history["lineage_v2"]["prefect_flow_run_id"] == "flow-run-2"
    assert history["lineage_v2"]["artifacts"]["token_cache"]["md5"] != history["tokens_v1"]
    assert history["policy_v1"] != history["policy_v2"]
    # the experiment ran with DVC_EXP_NAME set and on data v2
    assert history["lineage_exp"]["experiment"] == "seed1" and history["lineage_exp"]["data"]["md5"] == v2

    repo = history["repo"]
    old = lineage.find_outputs_for_data(v1, repo)
    assert [(o["path"], o["md5"]) for o in old] == [("models/policy", history["policy_v1"])]
    assert old[0]["data_md5"] == v1  # read back from the DVC cache at the old revision
    assert any(w.startswith(history["commit_v1"][:10]) for w in old[0]["seen_in"])

    new = {o["md5"]: o for o in lineage.find_outputs_for_data(v2[:10], repo, path="models/policy")}
    assert set(new) == {history["policy_v2"], history["policy_exp"]}
    assert any(w.startswith(history["commit_v2"][:10]) for w in new[history["policy_v2"]]["seen_in"])
    exp = new[history["policy_exp"]]
    assert exp["experiment"] == "seed1" and "workspace" in exp["seen_in"]
    assert any("exp:seed1" in w for w in exp["seen_in"])
    assert lineage.find_outputs_for_data("0123456789abcdef", repo) == []


def test_cli_prints_the_chain_and_the_outputs_of_a_data_version(history):
    repo, env = history["repo"], history["env"]
    out = _run(["vpdd", "lineage", "models/policy"], repo, env)
    assert history["v2"] in out and "build/tokens" in out and "stage policy" in out
    assert f"models/policy md5 {history['policy_exp']}" in out
    assert "consistent with the current dvc.lock and data.dvc" in out
    meta = json.loads(_run(["vpdd", "lineage", "models/policy/model.safetensors", "--json"], repo, env))
    assert meta["lineage"]["data"]["md5"] == history["v2"]

    listing = _run(["vpdd", "lineage", "--data", history["v1"][:8]], repo, env)
    assert history["policy_v1"] in listing and history["policy_v2"] not in listing
    as_json = json.loads(_run(["vpdd", "lineage", "--data", history["v2"], "--json"], repo, env))
    assert {o["md5"] for o in as_json} == {history["policy_v2"], history["policy_exp"]}


def test_cli_flags_a_checkpoint_whose_data_is_no_longer_the_pinned_one(history, tmp_path):
    import shutil

    repo = tmp_path / "copy"
    shutil.copytree(history["repo"], repo, symlinks=True)
    env = history["env"]
    (repo / "data/raw/episode_2.txt").write_text("episode 2, changed after training\n")
    _run(["dvc", "add", "-q", "data"], repo, env)
    out = _run(["vpdd", "lineage", "models/policy"], repo, env)
    assert "MISMATCH" in out and f"made from {history['v2']}" in out


def test_metadata_is_flat_and_round_trips():
    record = {"schema": 1, "data": {"md5": "abc.dir", "nfiles": 3}, "git": {"commit": "f00", "dirty": False},
              "artifacts": {"tokenizer": None}, "prefect_flow_run_id": None}
    meta = lineage.lineage_metadata(record)
    assert meta["vpdd.lineage.data.md5"] == "abc.dir" and meta["vpdd.lineage.data.nfiles"] == "3"
    assert meta["vpdd.lineage.git.dirty"] == "false" and meta["vpdd.lineage.artifacts.tokenizer"] == "null"
    assert lineage.lineage_from_metadata(meta) == record
    assert lineage.lineage_from_metadata({"other": "x"}) is None


def test_params_digest_is_order_independent_and_key_sensitive():
    a = lineage.params_digest({"train": {"lr": 1, "seed": 0}, "eval": {"n": 2}}, ["train"])
    b = lineage.params_digest({"eval": {"n": 3}, "train": {"seed": 0, "lr": 1}}, ["train"])
    c = lineage.params_digest({"train": {"lr": 2, "seed": 0}}, ["train"])
    assert a == b and a["sha256"] != c["sha256"]
    assert lineage.params_digest({"train": {"lr": 1}}, ["train.lr"])["keys"] == ["train.lr"]


def test_flow_run_id_prefers_the_flows_variable(monkeypatch):
    monkeypatch.delenv("VPDD_FLOW_RUN_ID", raising=False)
    monkeypatch.delenv("PREFECT__FLOW_RUN_ID", raising=False)
    assert lineage.flow_run_id() is None
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "p")
    assert lineage.flow_run_id() == "p"
    monkeypatch.setenv("VPDD_FLOW_RUN_ID", "v")
    assert lineage.flow_run_id() == "v"


def test_read_lineage_names_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="no lineage record"):
        lineage.read_lineage(tmp_path)
    (tmp_path / "lineage.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        lineage.read_lineage(tmp_path)
    (tmp_path / "x.safetensors").write_bytes(b"\x05\x00")
    with pytest.raises(ValueError, match="not a safetensors file"):
        lineage.read_lineage(tmp_path / "x.safetensors")


def test_upstream_stages_follow_outputs_to_deps():
    s = lineage.StageInfo
    stages = {"a": s("a", deps=["data"], outs=["build/x"]), "b": s("b", deps=["build/x/part"], outs=["m"]),
              "c": s("c", deps=["m"], outs=["r"]), "d": s("d", deps=["data"], outs=["q"])}
    assert lineage.upstream_stages(stages, ["c"]) == ["a", "b", "c"]
    assert lineage.upstream_stages(stages, []) == ["a", "b", "c", "d"]


def test_the_library_never_imports_prefect_and_lineage_never_imports_dvc(repo_root):
    for path in (repo_root / "vpdd").rglob("*.py"):
        text = path.read_text()
        assert "import prefect" not in text and "from prefect" not in text, path
    assert "import dvc" not in (repo_root / "vpdd/lineage.py").read_text()
