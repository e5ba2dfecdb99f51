"""Tasks shared by the vpdd flows: run DVC and the vpdd CLI with streamed logs (artifacts: artifacts_tasks.py).

Prefect sits on top of DVC and caches nothing itself: DVC decides what is stale, so every task that runs
DVC has ``cache_policy=NONE``. Only idempotent steps retry (``vpdd data fetch``, ``dvc pull``, ``dvc push``);
a stage that fails is reported once, with its name and the tail of its stderr, and not re-run.

One DVC writer at a time: DVC's repository lock makes a second ``dvc repro`` in the same checkout fail.
``flows/serve.py`` serves all deployments with ``limit=1`` and every DVC task carries the tag ``dvc``
(``prefect concurrency-limit create dvc 1`` extends the rule to work pools; prefect.yaml).

The checkout the flows work on is the one this file lives in (``flows/..``). This folder is not a package:
``python flows/serve.py`` and Prefect's entrypoint loader both put ``flows/`` on ``sys.path``, so the flow
modules import this one as ``dvc_tasks``. File names end in ``_flow``/``_tasks`` so that none of them can
shadow a standard-library or installed module (a test checks this).
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

REPO = Path(__file__).resolve().parents[1]
TAIL_LINES = 40

_STAGE_LINE = re.compile(
    r"Running stage '(?P<run>[^']+)'|Stage '(?P<skip>[^']+)' (?:didn't change|is cached)"
)
_FAILED_STAGE = re.compile(r"failed to reproduce '(?P<stage>[^']+)'")
_EXP_DONE = re.compile(r"Ran experiment\(s\): (?P<name>\S+)")


class StageFailed(RuntimeError):
    """A DVC stage (or the command running it) failed; the message names it and carries its stderr tail."""


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) from free text."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")


def tool_env() -> dict[str, str]:
    """The environment of DVC and vpdd subprocesses: this interpreter's scripts first on PATH, and the flow
    run id that ``vpdd.lineage`` records (``VPDD_FLOW_RUN_ID``)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    run_id, run_name = flow_run.get_id(), flow_run.get_name()
    if run_id:
        env["VPDD_FLOW_RUN_ID"] = str(run_id)
    if run_name:
        env["VPDD_FLOW_RUN_NAME"] = str(run_name)
    return env


def _exe(name: str, env: dict[str, str]) -> str:
    found = shutil.which(name, path=env.get("PATH"))
    if not found:
        raise StageFailed(f"`{name}` is not on PATH ({env.get('PATH')}); install the project (make install)")
    return found


def _pump(stream: Any, tag: str, out: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        out.put((tag, line.rstrip("\n")))
    stream.close()
    out.put((tag, None))


def stream_command(argv: list[str], cwd: Path, on_line: Any = None) -> tuple[int, list[str], list[str]]:
    """Run ``argv``, logging each stdout/stderr line into the Prefect run as it arrives.

    Returns (exit code, stdout lines, the last TAIL_LINES stderr lines). ``on_line(line)`` sees every line.
    """
    logger = get_run_logger()
    env = tool_env()
    argv = [_exe(argv[0], env), *argv[1:]]
    logger.info("$ %s  (in %s)", " ".join([Path(argv[0]).name, *argv[1:]]), cwd)
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            bufsize=1, errors="replace")
    lines: queue.Queue = queue.Queue()
    readers = [threading.Thread(target=_pump, args=(proc.stdout, "out", lines), daemon=True),
               threading.Thread(target=_pump, args=(proc.stderr, "err", lines), daemon=True)]
    for r in readers:
        r.start()
    stdout: list[str] = []
    stderr_tail: deque[str] = deque(maxlen=TAIL_LINES)
    open_streams = 2
    try:
        while open_streams:
            tag, line = lines.get()
            if line is None:
                open_streams -= 1
                continue
            (stdout.append if tag == "out" else stderr_tail.append)(line)
            if line.strip():
                logger.info(line)
            if on_line is not None:
                on_line(line)
        rc = proc.wait()
    except BaseException:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    return rc, stdout, list(stderr_tail)


def stage_names(repo: Path = REPO) -> dict[str, Any]:
    """The stages as DVC runs and prints them: a ``matrix:`` stage expanded to one ``name@value`` entry per
    combination, its ``${item...}`` paths resolved from params.yaml (dvc.lock's names)."""
    from vpdd.lineage import pipeline_stages

    return pipeline_stages(repo, expand=True)


def resolve_targets(targets: list[str], repo: Path = REPO) -> list[str]:
    """``targets`` as expanded stage names: ``bench_predict@rlbench`` stays, a matrix stage's own name
    (``bench_predict``, which ``dvc repro`` also accepts) becomes all its expansions (none when its matrix
    is empty). An unknown name raises :class:`StageFailed`."""
    from vpdd.lineage import pipeline_stages

    expanded, plain = stage_names(repo), pipeline_stages(repo)
    resolved: list[str] = []
    missing = []
    for t in targets:
        if t in expanded:
            resolved.append(t)
        elif t in plain:
            resolved += [n for n in expanded if n.partition("@")[0] == t]
        else:
            missing.append(t)
    if missing:
        raise StageFailed(f"stage(s) {missing} are not in {repo / 'dvc.yaml'} (it has {list(expanded)}); this "
                          f"flow runs once they exist")
    return list(dict.fromkeys(resolved))


def require_stages(stages: list[str], repo: Path = REPO) -> None:
    resolve_targets(stages, repo)


def dvc_command(targets: list[str], overrides: list[str] | None, exp_name: str | None, force: bool) -> list[str]:
    """``dvc repro [-f] TARGETS`` or, with overrides, ``dvc exp run -n NAME [-f] -S k=v ... TARGETS``."""
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ValueError(f"overrides must be key=value (a params.yaml key, e.g. tokenizer.steps=200), got {bad}")
        argv = ["dvc", "exp", "run"]
        if exp_name:
            argv += ["-n", exp_name]
        if force:
            argv.append("-f")
        for o in overrides:
            argv += ["-S", o]
        return argv + list(targets)
    return ["dvc", "repro", *(["-f"] if force else []), *targets]


@task(name="dvc-stages", tags=["dvc"], cache_policy=NONE)
def run_stages(targets: list[str], overrides: list[str] | None = None, exp_name: str | None = None,
               force: bool = False, repo: Path = REPO) -> dict[str, Any]:
    """Run DVC stages (all of them when ``targets`` is empty); a progress artifact follows DVC stage by stage."""
    from vpdd.lineage import upstream_stages

    expanded = resolve_targets(targets, repo) if targets else []
    if overrides and not exp_name:
        exp_name = flow_run.get_name()  # the Prefect run and the DVC experiment share a name
    argv = dvc_command(targets, overrides, exp_name, force)
    if not overrides:
        _warn_if_params_drifted(repo)
    known = stage_names(repo)
    planned = (upstream_stages(known, expanded) if expanded else []) if targets else list(known)
    progress_id = create_progress_artifact(
        0.0, key=artifact_key("progress", flow_run.get_flow_name() or "dvc"),
        description=f"`{' '.join(argv)}`: {len(planned)} stage(s) to check",
    )
    state: dict[str, Any] = {"current": None, "done": [], "ran": [], "skipped": [], "failed": None, "exp": None}

    def on_line(line: str) -> None:
        if m := _FAILED_STAGE.search(line):
            state["failed"] = m["stage"]
        if m := _EXP_DONE.search(line):
            state["exp"] = m["name"]
        m = _STAGE_LINE.search(line)
        if not m:
            return
        if state["current"]:
            state["done"].append(state["current"])
            state["current"] = None
        if m["run"]:
            state["current"] = m["run"]
            state["ran"].append(m["run"])
            what = f"running {m['run']}"
        else:
            state["done"].append(m["skip"])
            state["skipped"].append(m["skip"])
            what = f"{m['skip']} up to date"
        pct = 100.0 * min(len(state["done"]), len(planned)) / max(len(planned), 1)
        update_progress_artifact(progress_id, pct, description=what)

    snapshot = params_snapshot(repo) if overrides else None
    rc, _, err_tail = stream_command(argv, repo, on_line)
    if rc != 0 and snapshot is not None and restore_params(repo, snapshot):
        get_run_logger().warning("the experiment failed; params.yaml restored to what it was before it")
    if rc != 0:
        stage = state["failed"] or state["current"]
        where = f"DVC stage '{stage}' failed" if stage else "DVC failed before running a stage"
        update_progress_artifact(progress_id, 100.0 * len(state["done"]) / max(len(planned), 1),
                                 description=f"failed in stage {stage}" if stage else "failed")
        tail = "\n".join(err_tail[-20:])
        raise StageFailed(f"{where} (`{' '.join(argv)}` exited with {rc}). stderr tail:\n{tail}")
    update_progress_artifact(progress_id, 100.0, description=f"done: ran {', '.join(state['ran']) or 'nothing'}")
    return {"command": argv, "ran": state["ran"], "skipped": state["skipped"],
            "experiment": state["exp"] or (exp_name if overrides else None), "stages": planned}


def params_snapshot(repo: Path) -> bytes | None:
    """params.yaml's bytes before an experiment (None when there is none)."""
    path = repo / "params.yaml"
    return path.read_bytes() if path.is_file() else None


def restore_params(repo: Path, snapshot: bytes | None) -> bool:
    """Put back params.yaml as it was before a failed ``dvc exp run -S``, which rewrites it (the bad value in,
    the header comment out) and leaves it so on failure, so that the next plain run would build with it.
    True when something was restored."""
    path = repo / "params.yaml"
    if snapshot is None or (path.is_file() and path.read_bytes() == snapshot):
        return False
    tmp = path.with_name(".params.yaml.restore")
    tmp.write_bytes(snapshot)
    tmp.replace(path)
    return True


def _warn_if_params_drifted(repo: Path) -> None:
    """``dvc exp run`` leaves the experiment's params.yaml in the workspace; a plain ``dvc repro`` would then
    rebuild with those params. Say so (nothing is changed: restoring params.yaml is the user's call)."""
    proc = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "params.yaml"], cwd=repo, capture_output=True)
    if proc.returncode == 1:
        get_run_logger().warning(
            "params.yaml differs from the committed one (an earlier experiment, or a local edit); `dvc repro` "
            "uses the workspace version. `git checkout params.yaml` (or `vpdd config compose`) restores it.")


def _simple(name: str, argv: list[str], repo: Path) -> str:
    rc, out, err_tail = stream_command(argv, repo)
    if rc != 0:
        raise StageFailed(f"{name} failed (`{' '.join(argv)}` exited with {rc}). stderr tail:\n" + "\n".join(err_tail))
    return "\n".join(out)


@task(name="data-fetch", tags=["dvc"], cache_policy=NONE, retries=2, retry_delay_seconds=[10, 60])
def fetch_data(repo: Path = REPO) -> str:
    """``vpdd data fetch``: make data/ match data.dvc (dvc pull, else regenerate and verify). Idempotent."""
    return _simple("vpdd data fetch", ["vpdd", "data", "fetch"], repo)


@task(name="dvc-pull", tags=["dvc"], cache_policy=NONE, retries=2, retry_delay_seconds=[10, 60])
def dvc_pull(targets: list[str] | None = None, repo: Path = REPO) -> str:
    return _simple("dvc pull", ["dvc", "pull", *(targets or [])], repo)


@task(name="dvc-push", tags=["dvc"], cache_policy=NONE, retries=2, retry_delay_seconds=[10, 60])
def dvc_push(targets: list[str] | None = None, repo: Path = REPO) -> str:
    return _simple("dvc push", ["dvc", "push", *(targets or [])], repo)
