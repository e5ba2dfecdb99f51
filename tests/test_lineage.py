"""Lineage with real git, real DVC and the real pipeline: the project's dvc.yaml stages (``vpdd data ...``,
``vpdd tokenizer train/encode``, ``vpdd train pretrain/finetune``) on tiny synthetic data
(tests/flows/tiny_pipeline.py). One raw episode changes between two ``dvc repro`` runs; the new policy's
lineage shows the new data version, the old policy (committed, and restored from the DVC cache) the old one."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from vpdd import lineage

PARAM_KEYS = ["data.robot.tasks", "diffusion", "finetune", "model"]  # what dvc.yaml's finetune stage lists


def _tiny():
    name = "vpdd_test_tiny_pipeline"
    if name not in sys.modules:
        path = Path(__file__).resolve().parent / "flows" / "tiny_pipeline.py"
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


def _data_md5(repo: Path) -> str:
    return yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]


def _lock_outs(repo: Path) -> dict[str, str]:
    return {p: o["md5"] for p, o in lineage.lock_outputs(lineage.read_dvc_lock(repo)).items()}


def _record(repo: Path, out: str = "models/policy") -> dict:
    return json.loads((repo / out / "lineage.json").read_text())


def _change_one_episode(repo: Path) -> None:
    from vpdd.data.episodes import Episode, load_episode, save_episode

    path = repo / "data/metaworld/reach-v3/episode_0001.npz"
    ep = load_episode(path)
    save_episode(path, Episode(frames=255 - ep.frames, actions=ep.actions, states=ep.states, success=ep.success,
                               meta=ep.meta))


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """Data v1 -> dvc repro -> commit; one raw episode re-recorded -> dvc repro -> commit; then an experiment."""
    tp = _tiny()
    env = tp.tool_env(VPDD_FLOW_RUN_ID="flow-run-1")
    repo = tp.make_repo(tmp_path_factory.mktemp("lineage") / "repo", env)
    h: dict = {"repo": repo, "env": env, "data_commit_v1": tp.run(["git", "rev-parse", "HEAD"], repo, env).strip()}
    tp.run(["dvc", "repro"], repo, env)
    h["v1"], h["lineage_v1"], h["outs_v1"] = _data_md5(repo), _record(repo), _lock_outs(repo)
    h["pretrain_lineage_v1"] = _record(repo, "models/pretrain")
    h["commit_v1"] = tp.commit(repo, env, "policy from data v1")

    _change_one_episode(repo)
    tp.run(["dvc", "add", "-q", "data"], repo, env)
    h["repro_v2"] = tp.run(["dvc", "repro"], repo, {**env, "VPDD_FLOW_RUN_ID": "flow-run-2"})
    h["v2"], h["lineage_v2"], h["outs_v2"] = _data_md5(repo), _record(repo), _lock_outs(repo)
    h["pretrain_lineage_v2"] = _record(repo, "models/pretrain")
    h["commit_v2"] = tp.commit(repo, env, "data v2 and its policy")

    h["exp_out"] = tp.run(["dvc", "exp", "run", "-n", "seed1", "-S", "finetune.seed=1"], repo, env)
    h["lineage_exp"], h["outs_exp"] = _record(repo), _lock_outs(repo)
    return h


def test_the_policy_records_data_upstream_hashes_params_and_run(history):
    rec, repo, outs = history["lineage_v1"], history["repo"], history["outs_v1"]
    assert rec["data"]["md5"] == history["v1"] and rec["data"]["md5"].endswith(".dir")
    assert rec["data"]["dvc_file"] == "data.dvc" and rec["data"]["nfiles"] == 10  # 6 episodes, index, 3 video files
    assert rec["artifacts"] == {
        "token_cache": {"path": "build/tokens", "md5": outs["build/tokens"], "stage": "tokenize"},
        "tokenizer": {"path": "models/tokenizer", "md5": outs["models/tokenizer"], "stage": "train_tokenizer"},
        "pretrain": {"path": "models/pretrain", "md5": outs["models/pretrain"], "stage": "pretrain"},
    }
    assert rec["output"] == "models/policy" and rec["stage"] == "finetune" and rec["experiment"] is None
    assert rec["git"] == {"commit": history["data_commit_v1"], "dirty": False}  # the commit that pinned data v1
    params = yaml.safe_load(_tiny().run(["git", "show", f"{history['commit_v1']}:params.yaml"], repo,
                                        history["env"]))
    chosen = {k: lineage.lookup(params, k) for k in PARAM_KEYS}
    digest = hashlib.sha256(json.dumps(chosen, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert rec["params"] == {"file": "params.yaml", "keys": PARAM_KEYS, "sha256": digest}
    assert rec["kernel_impl"] == "torch"  # auto on a CPU
    assert rec["prefect_flow_run_id"] == "flow-run-1"
    assert rec["versions"]["dvc"] and rec["versions"]["vpdd"] and rec["versions"]["torch"]
    pre = history["pretrain_lineage_v1"]
    assert pre["stage"] == "pretrain" and pre["data"]["md5"] == history["v1"]
    assert pre["artifacts"]["tokenizer"] == rec["artifacts"]["tokenizer"] and pre["artifacts"]["pretrain"] is None


def test_the_weights_file_carries_the_same_record(history):
    repo = history["repo"]
    for out in ("models/pretrain", "models/policy"):
        meta = lineage.safetensors_metadata(repo / out / "model.safetensors")
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
        assert list(meta) == sorted(meta)  # written with sorted keys: the same record gives the same bytes
        assert lineage.lineage_from_metadata(meta) == _record(repo, out)
        assert meta["vpdd.lineage.data.md5"] == history["v2"] and meta["format"] == "pt"
    assert lineage.lineage_sources(repo / "models/policy") == {"lineage.json": history["lineage_exp"],
                                                               "model.safetensors": history["lineage_exp"]}


def test_new_data_version_gives_a_new_lineage_and_the_old_policy_keeps_the_old(history):
    v1, v2 = history["v1"], history["v2"]
    assert v1 != v2
    new = history["lineage_v2"]
    assert new["data"]["md5"] == v2 and new["prefect_flow_run_id"] == "flow-run-2"
    assert new["git"]["commit"] == history["commit_v1"]  # the v2 pin was not committed yet: the tree was dirty
    assert new["git"]["dirty"] is True
    # only the robot episodes changed: DVC re-ran what reads them and skipped the video corpus
    assert "Stage 'ingest_videos' didn't change" in history["repro_v2"]
    assert history["outs_v2"]["build/corpus"] == history["outs_v1"]["build/corpus"]
    for path in ("build/tokens", "models/tokenizer", "models/pretrain", "models/policy"):
        assert history["outs_v2"][path] != history["outs_v1"][path], path
    assert new["artifacts"]["token_cache"]["md5"] == history["outs_v2"]["build/tokens"]
    # the re-trained pre-trained model does not cite its own earlier version as an upstream artefact
    assert history["pretrain_lineage_v2"]["artifacts"]["pretrain"] is None
    assert history["pretrain_lineage_v2"]["data"]["md5"] == v2
    # the experiment re-ran only fine-tuning, on data v2, with DVC_EXP_NAME set
    exp = history["lineage_exp"]
    assert exp["experiment"] == "seed1" and exp["data"]["md5"] == v2
    assert exp["artifacts"]["pretrain"] == new["artifacts"]["pretrain"] and exp["params"] != new["params"]
    assert "Running stage 'pretrain'" not in history["exp_out"]

    repo = history["repo"]
    old = lineage.find_outputs_for_data(v1, repo, path="models/policy")
    assert [o["md5"] for o in old] == [history["outs_v1"]["models/policy"]]
    assert old[0]["data_md5"] == v1  # read back from the DVC cache at the old revision
    assert any(w.startswith(history["commit_v1"][:10]) for w in old[0]["seen_in"])

    found = {o["md5"]: o for o in lineage.find_outputs_for_data(v2[:10], repo, path="models/policy")}
    assert set(found) == {history["outs_v2"]["models/policy"], history["outs_exp"]["models/policy"]}
    exp_hit = found[history["outs_exp"]["models/policy"]]
    assert exp_hit["experiment"] == "seed1" and "workspace" in exp_hit["seen_in"]
    assert any("exp:seed1" in w for w in exp_hit["seen_in"])
    assert lineage.find_outputs_for_data("0123456789abcdef", repo) == []


def test_the_old_policy_restored_from_the_dvc_cache_still_shows_the_old_data(history, tmp_path):
    tp = _tiny()
    repo, env = tmp_path / "copy", history["env"]
    shutil.copytree(history["repo"], repo, symlinks=True)
    tp.run(["git", "checkout", "-q", "-f", history["commit_v1"]], repo, env)
    tp.run(["dvc", "checkout", "-f", "models/policy"], repo, env)
    assert lineage.read_lineage(repo / "models/policy") == history["lineage_v1"]
    weights = lineage.lineage_from_metadata(lineage.safetensors_metadata(repo / "models/policy/model.safetensors"))
    assert weights["data"]["md5"] == history["v1"]
    out = tp.run(["vpdd", "lineage", "models/policy"], repo, env)
    assert history["v1"] in out and history["v2"] not in out
    assert "consistent with the current dvc.lock and data.dvc" in out


def test_cli_prints_the_chain_and_the_outputs_of_a_data_version(history):
    tp = _tiny()
    repo, env = history["repo"], history["env"]
    out = tp.run(["vpdd", "lineage", "models/policy"], repo, env)
    assert history["v2"] in out and "build/tokens" in out and "stage finetune, experiment seed1" in out
    for path in ("build/tokens", "models/tokenizer", "models/pretrain"):
        assert history["outs_exp"][path] in out
    assert f"models/policy md5 {history['outs_exp']['models/policy']}" in out
    assert "record    in lineage.json and model.safetensors (the same)" in out
    assert "consistent with the current dvc.lock and data.dvc" in out
    meta = json.loads(tp.run(["vpdd", "lineage", "models/policy/model.safetensors", "--json"], repo, env))
    assert meta["lineage"]["data"]["md5"] == history["v2"] and meta["copies_disagree"] == []

    listing = tp.run(["vpdd", "lineage", "--data", history["v1"][:8], "--output", "models/policy"], repo, env)
    assert history["outs_v1"]["models/policy"] in listing and history["outs_v2"]["models/policy"] not in listing
    as_json = json.loads(tp.run(["vpdd", "lineage", "--data", history["v2"], "--json"], repo, env))
    policies = {o["md5"] for o in as_json if o["path"] == "models/policy"}
    assert policies == {history["outs_v2"]["models/policy"], history["outs_exp"]["models/policy"]}


def test_cli_flags_a_checkpoint_whose_data_is_no_longer_the_pinned_one(history, tmp_path):
    tp = _tiny()
    repo, env = tmp_path / "copy", history["env"]
    shutil.copytree(history["repo"], repo, symlinks=True)
    _change_one_episode(repo)
    tp.run(["dvc", "add", "-q", "data"], repo, env)
    out = tp.run(["vpdd", "lineage", "models/policy"], repo, env)
    assert "MISMATCH between the output's lineage and the current dvc.lock/data.dvc" in out
    assert f"made from {history['v2']}" in out


def test_the_two_copies_of_the_record_fall_back_and_disagreements_are_reported(history, tmp_path):
    from vpdd.policy import VPDDPolicy

    tp = _tiny()
    env = history["env"]
    policy = tmp_path / "policy"
    shutil.copytree(history["repo"] / "models/policy", policy)
    # save_pretrained writes the record into both copies
    saved = VPDDPolicy.from_pretrained(policy).save_pretrained(tmp_path / "saved")
    assert lineage.lineage_sources(saved) == {"lineage.json": history["lineage_exp"],
                                              "model.safetensors": history["lineage_exp"]}
    # lineage.json gone: the weights' copy answers
    (saved / "lineage.json").unlink()
    assert lineage.read_lineage(saved) == history["lineage_exp"]
    out = tp.run(["vpdd", "lineage", str(saved)], tmp_path, env)
    assert "record    in model.safetensors\n" in out and history["v2"] in out
    # lineage.json edited by hand: the two copies disagree and the command says where
    record = dict(history["lineage_exp"], data={**history["lineage_exp"]["data"], "md5": history["v1"]})
    (policy / "lineage.json").write_text(json.dumps(record))
    out = tp.run(["vpdd", "lineage", str(policy)], tmp_path, env)
    assert "MISMATCH between lineage.json and the model.safetensors metadata" in out
    assert f'data.md5: lineage.json "{history["v1"]}", model.safetensors "{history["v2"]}"' in out
    as_json = json.loads(tp.run(["vpdd", "lineage", str(policy), "--json"], tmp_path, env))
    assert as_json["copies"] == {"lineage.json": True, "model.safetensors": True}
    assert len(as_json["copies_disagree"]) == 1


def test_weights_metadata_is_written_with_stable_bytes(tmp_path):
    import torch
    from safetensors.torch import load_file

    from vpdd.runtime.checkpoint import checkpoint_hash, save_checkpoint, write_safetensors

    tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(3, dtype=torch.float16)}
    metadata = {f"key{i}": str(i) for i in range(40)}  # safetensors alone writes these in a random order
    for name in ("one", "two"):
        write_safetensors(tmp_path / f"{name}.safetensors", tensors, metadata)
    assert (tmp_path / "one.safetensors").read_bytes() == (tmp_path / "two.safetensors").read_bytes()
    assert lineage.safetensors_metadata(tmp_path / "one.safetensors") == dict(sorted(metadata.items()))
    back = load_file(str(tmp_path / "one.safetensors"))
    assert all(torch.equal(back[k], v) for k, v in tensors.items())

    record = {"schema": 1, "data": {"md5": "abc.dir"}, "git": {"commit": "f00", "dirty": False}}
    for name in ("c1", "c2"):
        save_checkpoint(tmp_path / name, config={"kind": "demo"}, weights=tensors,
                        weights_metadata=lineage.lineage_metadata(record))
    assert checkpoint_hash(tmp_path / "c1") == checkpoint_hash(tmp_path / "c2")
    assert lineage.read_lineage(tmp_path / "c1") == record  # no lineage.json: read from the weights
    with pytest.raises(TypeError, match="str to str"):
        save_checkpoint(tmp_path / "bad", config={}, weights=tensors, weights_metadata={"n": 3})
    assert not (tmp_path / "bad").exists()


def test_metadata_is_flat_and_round_trips():
    record = {"schema": 1, "data": {"md5": "abc.dir", "nfiles": 3}, "git": {"commit": "f00", "dirty": False},
              "artifacts": {"tokenizer": None}, "prefect_flow_run_id": None}
    meta = lineage.lineage_metadata(record)
    assert meta["vpdd.lineage.data.md5"] == "abc.dir" and meta["vpdd.lineage.data.nfiles"] == "3"
    assert meta["vpdd.lineage.git.dirty"] == "false" and meta["vpdd.lineage.artifacts.tokenizer"] == "null"
    assert lineage.lineage_from_metadata(meta) == record
    assert lineage.lineage_from_metadata({"other": "x"}) is None


def test_compare_records_names_each_differing_key():
    a = {"data": {"md5": "x"}, "git": {"commit": "1"}, "only_a": 1}
    b = {"data": {"md5": "y"}, "git": {"commit": "1"}}
    assert lineage.compare_records(a, b) == ['data.md5: lineage.json "x", model.safetensors "y"',
                                             "only_a: lineage.json 1, model.safetensors (absent)"]
    assert lineage.compare_records(a, json.loads(json.dumps(a))) == []


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
    (tmp_path / "model.safetensors").write_bytes(b"\x05\x00")
    with pytest.raises(ValueError, match="not a safetensors file"):
        lineage.read_lineage(tmp_path)
    (tmp_path / "lineage.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        lineage.read_lineage(tmp_path)
    import torch

    from vpdd.runtime.checkpoint import write_safetensors

    write_safetensors(tmp_path / "plain.safetensors", {"w": torch.zeros(2)}, {"format": "pt"})
    with pytest.raises(ValueError, match="holds no 'vpdd.lineage' key"):
        lineage.read_lineage(tmp_path / "plain.safetensors")


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
    for path in (repo_root / "vpdd/lineage").rglob("*.py"):
        assert "import dvc" not in path.read_text(), path


def test_tiny_pipeline_keeps_the_real_stage_commands(repo_root):
    """The lineage and server tests run the project's own stage commands, not stand-ins."""
    real = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]
    tiny = _tiny().dvc_yaml()["stages"]
    assert set(tiny) >= {"train_tokenizer", "tokenize", "pretrain", "finetune"}
    for name, spec in tiny.items():
        assert spec["cmd"] == real[name]["cmd"] and spec.get("outs") == real[name].get("outs"), name
    roots = ("data/", "build/", "models/", "${data.robot.episodes}")  # the last: the robot episode store's param
    assert np.all([d.startswith(roots) for s in tiny.values() for d in s["deps"]])
