"""The flows against a real Prefect server on 127.0.0.1, triggered through the API as the UI's Run button is.

One ``vpdd serve --with-server`` process tree (server + serve process) per module, over a temporary copy of
a tiny DVC repository: the real ``vpdd data inspect`` stage on two real episodes, a small corpus stage that
reads a param, and a tokenizer stage that fails. The teardown stops everything and checks that no process
is left and the port is closed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.flows

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
FLOW_NAMES = ["vpdd-data", "vpdd-tokenize", "vpdd-pretrain", "vpdd-finetune", "vpdd-evaluate",
              "vpdd-bench-kernels", "vpdd-pipeline"]

CORPUS_STAGE = """\
import json, pathlib, yaml
stride = yaml.safe_load(open("params.yaml"))["data"]["ingest"]["clip_stride"]
pathlib.Path("build/corpus").mkdir(parents=True, exist_ok=True)
pathlib.Path("build/corpus/index.json").write_text(json.dumps({"stride": stride}))
pathlib.Path("results/data").mkdir(parents=True, exist_ok=True)
pathlib.Path("results/data/corpus.json").write_text(json.dumps({"videos_found": 2, "clips": 32 // stride}))
print("corpus: stride", stride)
"""
FAILING_STAGE = """\
import sys
print("starting the tokenizer")
print("RuntimeError: simulated tokenizer failure (out of memory)", file=sys.stderr)
sys.exit(3)
"""
DVC_YAML = {
    "stages": {
        "inspect_robot_data": {
            "cmd": "vpdd data inspect data/metaworld --out results/data/robot.json",
            "deps": ["data/metaworld"],
            "metrics": [{"results/data/robot.json": {"cache": False}}],
        },
        "ingest_videos": {
            "cmd": "python corpus_stage.py",
            "deps": ["corpus_stage.py"],
            "params": ["data.ingest"],
            "outs": ["build/corpus"],
            "metrics": [{"results/data/corpus.json": {"cache": False}}],
        },
        "train_tokenizer": {"cmd": "python failing_stage.py", "deps": ["failing_stage.py"],
                            "outs": ["models/tokenizer"]},
        "tokenize": {"cmd": "cp -r models/tokenizer build/tokens", "deps": ["models/tokenizer"],
                     "outs": ["build/tokens"]},
    }
}


def _sh(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _make_repo(root: Path, repo_root: Path, env: dict[str, str]) -> Path:
    from vpdd.data.episodes import Episode, save_episode, write_index

    repo = root / "repo"
    shutil.copytree(repo_root / "flows", repo / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(repo_root / "params.yaml", repo / "params.yaml")
    (repo / "corpus_stage.py").write_text(CORPUS_STAGE)
    (repo / "failing_stage.py").write_text(FAILING_STAGE)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    entries = []
    for i, task in enumerate(["drawer-close-v3", "reach-v3"]):
        rng = np.random.default_rng(i)
        ep = Episode(frames=rng.integers(0, 255, (3, 8, 8, 3), dtype=np.uint8), actions=np.zeros((3, 4), np.float32),
                     states=np.zeros((3, 39), np.float32), success=np.array([0, 0, 1], bool),
                     meta={"task": task, "seed": i, "success": True})
        rel = f"{task}/episode_0.npz"
        save_episode(repo / "data/metaworld" / rel, ep)
        entries.append({"path": rel, "task": task, "seed": i, "length": 3})
    write_index(repo / "data/metaworld", entries)
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "add", "-q", "data"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"]):
        _sh(cmd, repo, env)
    return repo


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Api:
    def __init__(self, url: str):
        self.url = url

    def call(self, method: str, path: str, body: object | None = None) -> object:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        for attempt in range(6):
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return json.loads(r.read() or b"null")
            except urllib.error.HTTPError as err:
                # SQLite-backed server under load answers 503 ("database is locked"); the UI retries too
                if err.code != 503 or attempt == 5:
                    raise
            time.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

    def deployments(self) -> dict[str, str]:
        rows = self.call("POST", "/deployments/filter", {})
        flows = {f["id"]: f["name"] for f in self.call("POST", "/flows/filter", {})}
        return {f"{flows[d['flow_id']]}/{d['name']}": d["id"] for d in rows}

    def trigger(self, deployment_id: str, parameters: dict) -> str:
        """What the UI's Run button does."""
        run = self.call("POST", f"/deployments/{deployment_id}/create_flow_run", {"parameters": parameters})
        return run["id"]

    def wait(self, run_id: str, timeout: float = 60.0) -> dict:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            run = self.call("GET", f"/flow_runs/{run_id}")
            if run["state"] and run["state"]["type"] in TERMINAL:
                return run
            time.sleep(0.5)
        raise AssertionError(f"flow run {run_id} did not finish within {timeout} s: {run['state']}")

    def artifacts(self, run_id: str) -> dict[str, dict]:
        rows = self.call("POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
        return {a["key"]: a for a in rows if a["key"]}

    def logs(self, run_id: str, expect: list[str], timeout: float = 15.0) -> str:
        """The run's log, polled until it holds every string in ``expect`` (log batches can land after the
        run's final state)."""
        start = time.monotonic()
        while True:
            rows = self.call("POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
            text = "\n".join(r["message"] for r in rows)
            if all(e in text for e in expect) or time.monotonic() - start > timeout:
                return text
            time.sleep(0.5)


@pytest.fixture(scope="module")
def served(tmp_path_factory, repo_root):
    tmp = tmp_path_factory.mktemp("flows")
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1"}
    repo = _make_repo(tmp, repo_root, env)
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env.update(PREFECT_HOME=str(tmp / "prefect"), PREFECT_API_URL=api, PREFECT_UI_API_URL=api,
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="INFO",
               PREFECT_RUNNER_POLL_FREQUENCY="2")  # the serve process looks for new runs every 2 s (default 10)
    log = open(tmp / "serve.log", "w")  # noqa: SIM115 (closed in the teardown)
    t0 = time.monotonic()
    proc = subprocess.Popen([f"{bin_dir}/vpdd", "serve", "--with-server", "--port", str(port), "--repo", str(repo)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    client = Api(api)
    try:
        deployments: dict[str, str] = {}
        while len(deployments) < len(FLOW_NAMES):
            assert proc.poll() is None, (tmp / "serve.log").read_text()[-3000:]
            assert time.monotonic() - t0 < 90, "deployments did not appear within 90 s"
            time.sleep(0.5)
            try:
                deployments = client.deployments()
            except OSError:
                continue
        print(f"server + serve ready after {time.monotonic() - t0:.1f} s")
        yield client, deployments, repo, env
    finally:
        pgid = os.getpgid(proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
        left = []
        for _ in range(50):
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            left = subprocess.run(["ps", "-o", "pid,cmd", "-g", str(pgid)], capture_output=True, text=True).stdout
            os.killpg(pgid, signal.SIGKILL)
        log.close()
        assert not left, f"processes left after vpdd serve stopped:\n{left}"
        assert not _port_open(port), f"port {port} still open after the server stopped"


def test_all_flows_are_served_as_deployments(served):
    _, deployments, _, _ = served
    assert sorted(deployments) == sorted(f"{name}/local" for name in FLOW_NAMES)


def test_ui_triggered_run_executes_the_dvc_stages_and_publishes_artifacts(served):
    client, deployments, repo, _ = served
    t0 = time.monotonic()
    run_id = client.trigger(deployments["vpdd-data/local"], {})
    run = client.wait(run_id)
    print(f"vpdd-data: trigger to completion {time.monotonic() - t0:.1f} s; in the flow {run['total_run_time']:.1f} s")
    assert run["state"]["type"] == "COMPLETED", run["state"]
    robot = json.loads((repo / "results/data/robot.json").read_text())
    assert robot["episodes"] == 2 and robot["tasks"] == 2

    arts = client.artifacts(run_id)
    table = arts["metrics-inspect-robot-data"]
    assert table["type"] == "table"
    rows = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
    assert {"file": "results/data/robot.json", "metric": "episodes", "value": 2} in rows
    assert arts["metrics-ingest-videos"]["type"] == "table"
    lineage = arts["lineage"]
    assert lineage["type"] == "markdown"
    data_md5 = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]
    assert data_md5 in lineage["data"] and run_id in lineage["data"]
    corpus_md5 = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["ingest_videos"]["outs"][0]["md5"]
    assert corpus_md5 in lineage["data"]
    assert arts["progress-vpdd-data"]["type"] == "progress" and float(arts["progress-vpdd-data"]["data"]) == 100.0

    # dvc's output and the stage command's own output stream into the run; vpdd data fetch ran first
    expect = ["Running stage 'inspect_robot_data'", "corpus: stride 8", "matches data.dvc"]
    logs = client.logs(run_id, expect)
    for line in expect:
        assert line in logs, logs


def test_overrides_make_a_named_dvc_experiment_and_a_failing_stage_is_named(served):
    client, deployments, repo, env = served
    t0 = time.monotonic()
    exp_run = client.trigger(deployments["vpdd-data/local"],
                             {"overrides": ["data.ingest.clip_stride=4"], "exp_name": "stride4", "fetch": False})
    bad_run = client.trigger(deployments["vpdd-tokenize/local"], {"fetch": False})
    exp = client.wait(exp_run)
    bad = client.wait(bad_run)
    print(f"experiment run + failing run: {time.monotonic() - t0:.1f} s")
    assert exp["state"]["type"] == "COMPLETED", exp["state"]
    refs = _sh(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], repo, env)
    assert any(r.endswith("/stride4") for r in refs.split()), refs
    assert json.loads((repo / "results/data/corpus.json").read_text())["clips"] == 8
    arts = client.artifacts(exp_run)
    assert "`stride4`" in arts["lineage"]["data"] and "dvc exp run -n stride4" in arts["lineage"]["data"]

    assert bad["state"]["type"] == "FAILED", bad["state"]
    message = bad["state"]["message"]
    assert "'train_tokenizer'" in message and "simulated tokenizer failure" in message, message
    assert client.artifacts(bad_run)["progress-vpdd-tokenize"]["description"] == "failed in stage train_tokenizer"
