"""A tiny copy of the real vpdd pipeline as its own git + DVC repository, for the lineage and server tests.

The stages are the ones in the project's dvc.yaml, with their real ``vpdd`` commands; only the deps that
point at the project's source (``vpdd/``, ``conf/``) are dropped, since the copy has no source tree. The raw
data are the synthetic episodes and videos of tests/train/synthetic.py (16x16 frames, two tasks, three
demonstrations each) and params.yaml is that module's shrunken tiny preset, so the whole pipeline (data
stages, tokenizer, token cache, pre-training, fine-tuning) runs in well under a minute on a CPU.

Not a test module (no ``test_`` prefix); tests load it by path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

PROJECT = Path(__file__).resolve().parents[2]
# The stages copied from the project's dvc.yaml (evaluate joins once it exists and runs without a simulator).
STAGES = ("inspect_robot_data", "render_task_video", "ingest_videos", "train_tokenizer", "tokenize", "pretrain",
          "finetune")
KEPT_DEP_ROOTS = ("data/", "build/", "models/", "${data.robot.episodes}")


def tool_env(**extra: str) -> dict[str, str]:
    """The environment of git/dvc/vpdd subprocesses: this venv first on PATH, quiet, offline, single-threaded
    torch (the test machines have 2 cores shared with other work)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    for name in ("VPDD_FLOW_RUN_ID", "VPDD_FLOW_RUN_NAME", "PREFECT__FLOW_RUN_ID", "VPDD_KERNEL_IMPL",
                 "DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME"):
        env.pop(name, None)
    env.update(extra)
    return env


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    """Run a command; on failure raise with its output (a test's assertion message)."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"`{' '.join(cmd)}` in {cwd} exited with {proc.returncode}:\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout + proc.stderr


def commit(repo: Path, env: dict[str, str], message: str) -> str:
    run(["git", "add", "-A"], repo, env)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], repo, env)
    return run(["git", "rev-parse", "HEAD"], repo, env).strip()


def dvc_yaml(stages: tuple[str, ...] = STAGES) -> dict[str, Any]:
    """The project's dvc.yaml restricted to ``stages``, without deps on the project's source tree."""
    doc = yaml.safe_load((PROJECT / "dvc.yaml").read_text())
    missing = [s for s in stages if s not in doc["stages"]]
    if missing:
        raise KeyError(f"{PROJECT / 'dvc.yaml'}: no stage(s) {missing}")
    out: dict[str, Any] = {"metrics": doc.get("metrics", []), "stages": {}}
    for name in stages:
        spec = dict(doc["stages"][name])
        spec["deps"] = [d for d in spec.get("deps", []) if str(d).startswith(KEPT_DEP_ROOTS)]
        out["stages"][name] = spec
    return out


def _synthetic():
    import importlib.util

    name = "vpdd_test_synthetic"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, PROJECT / "tests" / "train" / "synthetic.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def write_videos(folder: Path, seed: int = 1) -> None:
    import numpy as np

    from vpdd.data.video import write_video

    syn = _synthetic()
    rng = np.random.default_rng(seed)
    for k, length in enumerate([40, 48]):
        write_video(folder / f"clip_{k}.mp4", syn.moving_square_video(rng, length))
    (folder / "clip_0.txt").write_text("a hand opens a drawer\n")


def write_rollout_video(path: Path, seed: int = 2) -> Path:
    """A rollout video as `vpdd eval run` writes one (mp4, MPEG-4 Part 2), for tests without a simulator."""
    import numpy as np

    from vpdd.data.video import write_video

    return write_video(path, _synthetic().moving_square_video(np.random.default_rng(seed), 12))


def make_repo(dest: Path, env: dict[str, str], *, flows: bool = False, extra_stages: dict[str, Any] | None = None,
              **param_overrides: Any) -> Path:
    """A committed git + DVC repository at ``dest`` running the real stages on tiny synthetic data.

    ``flows`` also copies the project's ``flows/`` (for ``vpdd serve --repo``); ``extra_stages`` are added to
    dvc.yaml; ``param_overrides`` (dotted keys) change the tiny params.
    """
    syn = _synthetic()
    dest.mkdir(parents=True)
    syn.write_robot_root(dest / "data" / "metaworld")
    write_videos(dest / "data" / "videos")
    syn.write_params(dest / "params.yaml", **param_overrides)
    doc = dvc_yaml()
    doc["stages"].update(extra_stages or {})
    (dest / "dvc.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    (dest / ".gitignore").write_text("__pycache__/\n")
    if flows:
        shutil.copytree(PROJECT / "flows", dest / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "add", "-q", "data"]):
        run(cmd, dest, env)
    commit(dest, env, "tiny pipeline, data v1")
    return dest
