"""The flows against a real Prefect server on 127.0.0.1, triggered through the API as the UI's Run button is.

One ``vpdd serve --with-server`` process tree (server + serve process) per module, over a tiny copy of the
real pipeline (tests/flows/tiny_pipeline.py: the project's dvc.yaml stages and ``vpdd`` commands on
synthetic 16x16 episodes and videos, in its own git + DVC repository). The runs, in order:

1. ``vpdd-data``: the data stages through ``dvc repro``; metrics tables, lineage, progress, streamed logs;
2. ``vpdd-pipeline`` with an override: ``dvc exp run -n ft4 -S finetune.steps=4`` rebuilds tokenizer, token
   cache, pre-trained model and policy; metrics tables, the per-task success table (from a hand-written
   results/eval/metrics.json in the shape ``vpdd eval`` writes), the lineage markdown, and the policy's
   lineage (Prefect flow-run id, experiment name) in lineage.json and in the weights' metadata;
3. ``vpdd-tokenize`` with a bad override: FAILED, the message names the stage and carries its stderr;
4. ``vpdd-bench-kernels`` on tiny shapes: the results table and the plot link.

The teardown stops everything and checks that no process is left and the port is closed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.flows

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
RUNS: dict[str, str] = {}  # flow-run ids of this module's runs, for the browser check
FLOW_NAMES = ["vpdd-data", "vpdd-tokenize", "vpdd-pretrain", "vpdd-finetune", "vpdd-evaluate",
              "vpdd-bench-kernels", "vpdd-pipeline", "vpdd-study"]
# results/eval/metrics.json as `vpdd eval` writes it (written by hand here: evaluation needs a simulator)
EVAL_METRICS = {
    "mean_success": 0.25, "ci95": [0.09, 0.52], "episodes": 8,
    "tasks": {"push-v3": {"success": 0.5, "ci95": [0.15, 0.85], "episodes": 4, "successes": 2},
              "reach-v3": {"success": 0.0, "ci95": [0.0, 0.49], "episodes": 4, "successes": 0}},
    "seed": 0,
}


def _tiny():
    name = "vpdd_test_tiny_pipeline"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("tiny_pipeline.py"))
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


def _rows(artifact: dict) -> list[dict]:
    data = artifact["data"]
    return json.loads(data) if isinstance(data, str) else data


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
def served(tmp_path_factory):
    tp = _tiny()
    tmp = tmp_path_factory.mktemp("flows")
    env = tp.tool_env()
    repo = tp.make_repo(tmp / "repo", env, flows=True)
    (repo / "results" / "eval").mkdir(parents=True)
    (repo / "results" / "eval" / "metrics.json").write_text(json.dumps(EVAL_METRICS, indent=1))
    tp.write_rollout_video(repo / "results/eval/videos/push-v3/seed0_ep0_success.mp4")  # as `vpdd eval` names it
    tp.commit(repo, env, "evaluation results")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env.update(PREFECT_HOME=str(tmp / "prefect"), PREFECT_API_URL=api, PREFECT_UI_API_URL=api,
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="INFO",
               PREFECT_RUNNER_POLL_FREQUENCY="2")  # the serve process looks for new runs every 2 s (default 10)
    log = open(tmp / "serve.log", "w")  # noqa: SIM115 (closed in the teardown)
    t0 = time.monotonic()
    vpdd = str(Path(sys.executable).parent / "vpdd")
    proc = subprocess.Popen([vpdd, "serve", "--with-server", "--port", str(port), "--repo", str(repo)],
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
    run = client.wait(run_id, timeout=120)
    print(f"vpdd-data: trigger to completion {time.monotonic() - t0:.1f} s; in the flow {run['total_run_time']:.1f} s")
    assert run["state"]["type"] == "COMPLETED", run["state"]
    robot = json.loads((repo / "results/data/robot.json").read_text())
    assert robot["episodes"] == 6 and robot["tasks"] == 2

    arts = client.artifacts(run_id)
    table = arts["metrics-inspect-robot-data"]
    assert table["type"] == "table"
    assert {"file": "results/data/robot.json", "metric": "episodes", "value": 6} in _rows(table)
    assert arts["metrics-ingest-videos"]["type"] == "table"
    lineage = arts["lineage"]
    assert lineage["type"] == "markdown"
    data_md5 = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]
    assert data_md5 in lineage["data"] and run_id in lineage["data"]
    corpus_md5 = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["ingest_videos"]["outs"][0]["md5"]
    assert corpus_md5 in lineage["data"]
    assert arts["progress-vpdd-data"]["type"] == "progress" and float(arts["progress-vpdd-data"]["data"]) == 100.0

    # dvc's output and the stage commands' own output stream into the run; vpdd data fetch ran first
    expect = ["Running stage 'inspect_robot_data'", "Running stage 'ingest_videos'", "matches data.dvc"]
    logs = client.logs(run_id, expect)
    for line in expect:
        assert line in logs, logs


def test_pipeline_run_with_an_override_is_an_experiment_with_metrics_and_lineage(served):
    from vpdd import lineage as lin

    client, deployments, repo, env = served
    t0 = time.monotonic()
    run_id = client.trigger(deployments["vpdd-pipeline/local"],
                            {"overrides": ["finetune.steps=4"], "exp_name": "ft4"})
    RUNS["pipeline"] = run_id
    run = client.wait(run_id, timeout=240)
    print(f"vpdd-pipeline with an override: trigger to completion {time.monotonic() - t0:.1f} s")
    assert run["state"]["type"] == "COMPLETED", run["state"]
    refs = _tiny().run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], repo, env)
    assert any(r.endswith("/ft4") for r in refs.split()), refs
    assert yaml.safe_load((repo / "params.yaml").read_text())["finetune"]["steps"] == 4

    # the policy's lineage: this flow run, this experiment, the pinned data, the upstream hashes of dvc.lock
    record = json.loads((repo / "models/policy/lineage.json").read_text())
    assert record["prefect_flow_run_id"] == run_id and record["experiment"] == "ft4"
    data_md5 = yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]
    outs = lin.lock_outputs(lin.read_dvc_lock(repo))
    assert record["data"]["md5"] == data_md5
    for name, path in lin.UPSTREAM_OUTPUTS.items():
        assert record["artifacts"][name]["md5"] == outs[path]["md5"], name
    weights = lin.lineage_from_metadata(lin.safetensors_metadata(repo / "models/policy/model.safetensors"))
    assert weights == record

    arts = client.artifacts(run_id)
    for stage in ("train-tokenizer", "pretrain", "finetune"):
        assert arts[f"metrics-{stage}"]["type"] == "table", sorted(arts)
    assert {"file": "results/finetune/metrics.json", "metric": "steps", "value": 4} in _rows(arts["metrics-finetune"])
    # figures and videos are embedded in their cards (a browser refuses file:// links from the UI page), so
    # an old run's card still shows that run's file
    import base64

    card = arts["media-results-finetune-samples-png"]
    png = base64.b64encode((repo / "results/finetune/samples.png").read_bytes()).decode()
    assert card["type"] == "markdown" and f"(data:image/png;base64,{png})" in card["data"]
    assert "`history`" in card["data"] and "file://" not in card["data"]
    assert arts["curves-results-finetune-plots-metrics"]["data"].count("data:image/png;base64,") == 1
    video = arts["media-results-eval-videos-push-v3-seed0-ep0-success-mp4"]["data"]
    assert '<video controls' in video and 'src="data:video/webm;base64,' in video
    assert not any(k.startswith("file-") for k in arts), sorted(arts)
    success = _rows(arts["success-eval"])
    assert success[0] == {"task": "push-v3", "success": 0.5, "ci95_low": 0.15, "ci95_high": 0.85, "successes": 2,
                          "episodes": 4}
    assert success[-1] == {"task": "mean", "success": 0.25, "ci95_low": 0.09, "ci95_high": 0.52, "successes": 2,
                           "episodes": 8}
    md = arts["lineage"]["data"]
    assert "## Lineage of `models/policy`" in md and outs["models/policy"]["md5"] in md
    assert "dvc exp run -n ft4 -S finetune.steps=4" in md and "experiment: `ft4`" in md
    assert md.count(run_id) >= 2  # the run's own line and the policy record's
    assert "MISMATCH" not in md
    assert float(arts["progress-vpdd-pipeline"]["data"]) == 100.0


def _browser():
    """A headless Chromium through Playwright, or a skip naming what is missing (neither is a dependency of
    vpdd: ``pip install playwright`` and Debian's ``chromium``, or VPDD_CHROMIUM=/path/to/chrome)."""
    import shutil

    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright for the browser check")
    exe = os.environ.get("VPDD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.skip("no Chromium on PATH (apt install chromium) for the browser check")
    return sync_api, exe


def test_the_ui_shows_the_run_artifacts_with_images_inline_and_videos_that_play(served, tmp_path):
    """In a real headless browser: the flow run's Artifacts tab lists the cards, a figure card shows its image
    and a rollout card's video loads and plays (data: URIs, no file:// link)."""
    sync_api, exe = _browser()
    client, _, _, _ = served
    run_id = RUNS.get("pipeline")
    if run_id is None:
        pytest.skip("needs the pipeline run of test_pipeline_run_with_an_override_is_an_experiment_...")
    arts = client.artifacts(run_id)
    ui = client.url.removesuffix("/api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe,
                                    args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{ui}/runs/flow-run/{run_id}")
        page.wait_for_selector("text=Artifacts", timeout=60_000)  # the single-page app has rendered the run
        page.locator("text=Artifacts").last.click()  # the tab (the first match is the navigation's)
        page.wait_for_selector("text=media-results-finetune-samples-png", timeout=30_000)
        page.screenshot(path=str(tmp_path / "artifacts_tab.png"), full_page=True)
        for key in ("metrics-finetune", "lineage", "media-results-eval-videos-push-v3-seed0-ep0-success-mp4"):
            assert page.locator(f"text={key}").count() >= 1, key

        page.goto(f"{ui}/artifacts/artifact/{arts['media-results-finetune-samples-png']['id']}")
        img = page.wait_for_selector("img[src^='data:image/png;base64,']", timeout=60_000)
        assert img.evaluate("e => e.complete && e.naturalWidth > 0 && e.naturalHeight > 0")
        page.screenshot(path=str(tmp_path / "figure_card.png"), full_page=True)

        page.goto(f"{ui}/artifacts/artifact/{arts['media-results-eval-videos-push-v3-seed0-ep0-success-mp4']['id']}")
        video = page.wait_for_selector("video[src^='data:video/webm;base64,']", timeout=60_000)
        # it loads, has frames and a duration, and plays (its clock advances)
        assert video.evaluate("""v => new Promise(resolve => {
            v.muted = true;
            const play = () => v.play().then(() => setTimeout(() => resolve(
                v.duration > 0 && v.videoWidth > 0 && !v.error && v.currentTime > 0), 300), () => resolve(false));
            if (v.readyState >= 2) play();
            else { v.addEventListener('loadeddata', play); v.addEventListener('error', () => resolve(false)); }
            setTimeout(() => resolve(false), 15000);
        })""")
        page.screenshot(path=str(tmp_path / "video_card.png"), full_page=True)
        browser.close()
    print(f"browser screenshots in {tmp_path}")


def test_a_failing_stage_is_named_with_its_stderr(served):
    client, deployments, repo, env = served
    run_id = client.trigger(deployments["vpdd-tokenize/local"],
                            {"overrides": ["tokenizer.n_codes=0"], "exp_name": "broken", "fetch": False})
    run = client.wait(run_id, timeout=120)
    assert run["state"]["type"] == "FAILED", run["state"]
    message = run["state"]["message"]
    assert "'train_tokenizer'" in message and "tokenizer.n_codes=0: expected a value > 0" in message, message
    assert client.artifacts(run_id)["progress-vpdd-tokenize"]["description"] == "failed in stage train_tokenizer"


def test_kernel_benchmark_flow_publishes_its_results_table(served):
    import base64

    client, deployments, repo, _ = served
    args = ["--K", "64", "--N", "16", "--B", "1", "--repeats", "1", "--providers", "torch", "eager"]
    run_id = client.trigger(deployments["vpdd-bench-kernels/local"],
                            {"device": "cpu", "ops": ["posterior"], "args": args})
    run = client.wait(run_id, timeout=120)
    assert run["state"]["type"] == "COMPLETED", run["state"]
    record = json.loads((repo / "benchmarks/results/kernels_cpu.json").read_text())
    arts = client.artifacts(run_id)
    rows = _rows(arts["bench-kernels-cpu"])
    assert {(r["op"], r["provider"], r["K"]) for r in rows} == {("posterior", "torch", 64), ("posterior", "eager", 64)}
    assert all(r["status"] == "ok" and r["ms_p50"] > 0 for r in rows)
    assert record["machine"]["date"] in arts["bench-kernels-cpu"]["description"]
    plot = base64.b64encode((repo / "benchmarks/results/kernels_cpu.png").read_bytes()).decode()
    assert f"(data:image/png;base64,{plot})" in arts["media-benchmarks-results-kernels-cpu-png"]["data"]
