"""Metrics files hold metrics: the run's description goes to a sidecar DVC does not read (vpdd.utils.records)."""

from __future__ import annotations

import json
import subprocess

from vpdd.eval.compare import read_metrics
from vpdd.eval.report import RUN_KEYS
from vpdd.utils.records import read_record, sidecar_path, write_metrics


def test_metrics_and_run_description_are_split_and_joined_again(tmp_path):
    record = {"mean_success": 0.5, "ci95": [0.2, 0.8], "episodes": 4, "tasks": {"reach-v3": {"success": 0.5}},
              "machine": {"cpu": "x", "versions": {"torch": "2"}}, "settings": {"seeds": [0]},
              "policy": {"checkpoint_hash": "ab" * 32}, "timing": {"s_per_env_step": 0.1}, "videos": ["v.mp4"]}
    path = write_metrics(tmp_path / "metrics.json", record, RUN_KEYS)
    assert set(json.loads(path.read_text())) == {"mean_success", "ci95", "episodes", "tasks"}
    assert set(json.loads((tmp_path / "run.json").read_text())) == set(RUN_KEYS)
    assert read_record(path) == record
    assert sidecar_path(tmp_path / "predict.json") == tmp_path / "predict.run.json"


def test_eval_compare_reads_timing_from_the_sidecar_in_a_git_revision(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_metrics(tmp_path / "metrics.json", {"mean_success": 0.5, "timing": {"s_per_env_step": 0.25}}, RUN_KEYS)
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "m"], check=True)
    assert read_metrics("HEAD:metrics.json")["timing"]["s_per_env_step"] == 0.25
    assert read_metrics("metrics.json")["timing"]["s_per_env_step"] == 0.25
