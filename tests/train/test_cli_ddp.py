"""The ``vpdd train`` / ``vpdd policy`` commands as subprocesses: SIGTERM saves and exits 130, the same command
resumes; torchrun with 2 gloo processes; the benchmark command writes its results file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from vpdd.models.checkpoint import load_vpdd_checkpoint
from vpdd.runtime.checkpoint import load_checkpoint


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}


def _cmd(stage: str, params, art, out, *extra: str) -> list[str]:
    return ["-m", "vpdd.cli.train", stage, "--params", str(params), "--tokens", str(art["tokens"]),
            "--tokenizer", str(art["tokenizer"]), "--out", str(out), *extra]


def test_sigterm_saves_a_checkpoint_and_the_same_command_resumes(artefacts, synthetic, tmp_path):
    params = synthetic.write_params(tmp_path / "params.yaml", **{"pretrain.steps": 400, "pretrain.checkpoint_every": 2,
                                                                   "pretrain.eval_samples": 0})
    cmd = [sys.executable, *_cmd("pretrain", params, artefacts, tmp_path / "ck", "--live", str(tmp_path / "live"))]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (tmp_path / "ck" / "meta.json").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "run the same command again to resume" in err
    stopped = load_checkpoint(tmp_path / "ck").step
    assert 2 <= stopped < 400
    params = synthetic.write_params(tmp_path / "params.yaml", **{"pretrain.steps": stopped + 2,
                                                                   "pretrain.checkpoint_every": 2,
                                                                   "pretrain.eval_samples": 0})
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming {tmp_path / 'ck'} from step {stopped}" in done.stderr
    assert load_checkpoint(tmp_path / "ck").step == stopped + 2
    # a different run in the same directory is refused with exit code 2 and the differing key
    other = synthetic.write_params(tmp_path / "other.yaml", **{"pretrain.steps": stopped + 2, "pretrain.lr": 0.5})
    bad = subprocess.run([sys.executable, *_cmd("pretrain", other, artefacts, tmp_path / "ck")], env=_env(),
                         capture_output=True, text=True, timeout=240)
    assert bad.returncode == 2 and "lr" in bad.stderr and "--fresh" in bad.stderr


def test_torchrun_with_two_gloo_processes(artefacts, synthetic, tmp_path):
    params = synthetic.write_params(tmp_path / "params.yaml", **{"pretrain.steps": 4, "pretrain.checkpoint_every": 2})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *_cmd("pretrain", params, artefacts, tmp_path / "ck", "--live", str(tmp_path / "live"))]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "joined process group: rank 0 of 2 (gloo" in proc.stderr
    ck = load_vpdd_checkpoint(tmp_path / "ck", training_state=True)
    state = ck.checkpoint.training_state
    assert ck.checkpoint.meta["world_size"] == 2 and state["step"] == 4
    # each rank keeps (and saves) its own importance-sampling history; both saw 4 steps x 2 micro x 4 sequences
    assert len(state["scheduler"]) == 2 and [int(s["Lt_count"].sum()) for s in state["scheduler"]] == [32, 32]
    metrics = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert metrics["step"] == 4 and metrics["train"]["seq_per_s"] > 0


def test_policy_commands_and_the_benchmark(trained, tmp_path):
    from vpdd.cli import main

    assert main(["policy", "info", str(trained["policy"])]) == 0
    episode = next((trained["robot"] / "push-v3").glob("*.npz"))
    png = tmp_path / "pred.png"
    assert main(["policy", "predict", "--policy", str(trained["policy"]), "--episode", str(episode), "--step", "5",
                 "--stride", "5", "--out", str(png)]) == 0
    assert png.stat().st_size > 0
    out = tmp_path / "bench.json"
    from vpdd.train.benchmark import main as bench

    assert bench(["--seconds", "0.2", "--sample-stride", "50", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    stages = [r["stage"] for r in record["results"]]
    assert stages == ["pretrain", "finetune", "sample"] and record["machine"]["cpu_count"] >= 1
    assert all(r.get("median_step_s", 1) > 0 for r in record["results"])
