"""What a person reads: metrics files that hold metrics (the run described in a sidecar), offline plots."""

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


def test_dvc_plots_page_needs_no_network(repo_root):
    """`dvc plots show` fills the template of .dvc/config's plots.html_template: it must load no script from
    outside (Vega, Vega-Lite and vega-embed inlined) and have DVC's plots placeholder."""
    import configparser
    import re

    cfg = configparser.ConfigParser()
    cfg.read(repo_root / ".dvc" / "config")
    template = (repo_root / ".dvc" / cfg["plots"]["html_template"]).read_text()
    assert "{plot_divs}" in template and "{scripts}" not in template  # no placeholder for DVC's CDN tags
    assert not re.search(r"<script[^>]+src=", template)
    assert all(f"{name}@" in template or name in template for name in ("vega 5", "vega-lite 5", "vega-embed 6"))
    assert "dvc_plots/" in (repo_root / ".gitignore").read_text().split()
