"""The DVC pipeline from a fresh clone: raw data regenerated and verified against data.dvc, the data
stages run, and a second `dvc repro` does nothing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.sim]


def _run(cmd: list[str], cwd: Path, env: dict[str, str], ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if ok and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def clone(tmp_path_factory, repo_root):
    """A copy of the project's committed and untracked-but-not-ignored files, as a new git repo."""
    dest = tmp_path_factory.mktemp("clone") / "vpdd"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=repo_root, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        if (repo_root / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo_root / rel, dest / rel)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "clone"]):
        subprocess.run(cmd, cwd=dest, check=True)
    return dest


def test_fresh_clone_regenerates_pinned_data_and_repro_is_idempotent(clone, tool_env, tmp_path):
    empty_remote = tmp_path / "remote"
    _run(["dvc", "remote", "modify", "--local", "local", "url", str(empty_remote)], clone, tool_env)
    pinned = (clone / "data.dvc").read_text()
    fetch = _run(["vpdd", "data", "fetch"], clone, tool_env)
    assert "matches the pin" in fetch.stdout
    assert (clone / "data.dvc").read_text() == pinned
    assert any(empty_remote.rglob("*")), "verified data is pushed to the default remote"

    stages = ["inspect_robot_data", "ingest_videos"]
    first = _run(["dvc", "repro", *stages], clone, tool_env)
    assert "Running stage 'ingest_videos'" in first.stdout
    corpus = yaml.safe_load((clone / "results/data/corpus.json").read_text())
    robot = yaml.safe_load((clone / "results/data/robot.json").read_text())
    assert corpus["videos_ingested"] == corpus["videos_found"] > 0 and corpus["clips"] > 0
    params = yaml.safe_load((clone / "params.yaml").read_text())
    assert robot["tasks"] == len(params["data"]["robot"]["tasks"])
    assert robot["episodes"] == robot["tasks"] * params["data"]["robot"]["demos_per_task"]

    second = _run(["dvc", "repro", *stages], clone, tool_env)
    assert "Running stage" not in second.stdout
    assert "didn't change, skipping" in second.stdout

    # An override through DVC's Hydra composition re-runs only what reads it.
    exp = _run(["dvc", "exp", "run", "-S", "data.ingest.clip_stride=4", "ingest_videos"], clone, tool_env)
    assert "Running stage 'ingest_videos'" in exp.stdout
    denser = yaml.safe_load((clone / "results/data/corpus.json").read_text())
    assert denser["clips"] > corpus["clips"]
    assert yaml.safe_load((clone / "params.yaml").read_text())["data"]["ingest"]["clip_stride"] == 4

    # A fetch when data/ already matches the pin does nothing.
    again = _run(["vpdd", "data", "fetch"], clone, tool_env)
    assert "matches data.dvc" in again.stdout


def test_regenerated_data_that_differs_from_the_pin_is_refused(clone, tool_env, tmp_path):
    work = tmp_path / "w"
    skip = {clone: {"data", "build", "results"}, clone / ".dvc": {"cache", "tmp"}}  # no data, no DVC cache
    shutil.copytree(clone, work, ignore=lambda d, names: [n for n in names if n in skip.get(Path(d), ())])
    _run(["dvc", "remote", "modify", "--local", "local", "url", str(tmp_path / "nothing")], work, tool_env)
    # A smaller collection than the pinned one: the regenerated data cannot match.
    _run(["vpdd", "config", "compose", "data.robot.tasks=[drawer-close-v3]", "data.robot.demos_per_task=1",
          "finetune.demos_per_task=1", "data.corpus.videos_per_task=1", "data.corpus.tasks=[button-press-v3]",
          "-o", "small.yaml"], work, tool_env)
    pinned = (work / "data.dvc").read_text()
    proc = _run(["vpdd", "data", "fetch", "--params", "small.yaml"], work, tool_env, ok=False)
    assert proc.returncode == 2
    assert "differs from the version pinned in data.dvc" in proc.stderr and "--repin" in proc.stderr
    assert (work / "data.dvc").read_text() == pinned
