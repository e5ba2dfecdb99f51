"""Tasks that publish what a run produced as Prefect artifacts: a metrics table per stage, links to plots and
rollout videos, the per-task success table, and the run's lineage markdown. They read files; they run nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dvc_tasks import REPO, artifact_key, stage_names
from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

MAX_TABLE_ROWS = 200
MEDIA_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".mp4", ".webm", ".html")


def _flatten(prefix: str, node: Any, rows: list[tuple[str, Any]]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, rows)
    elif isinstance(node, list) and len(node) > 8:
        rows.append((prefix, f"[{len(node)} values]"))
    else:
        rows.append((prefix, node if isinstance(node, (int, float, str, bool)) or node is None else json.dumps(node)))


@task(name="publish-stage-artifacts", cache_policy=NONE)
def publish_stage_artifacts(stages: list[str], repo: Path = REPO) -> list[str]:
    """A metrics table per stage (its metrics JSON files in dvc.yaml) and a link per plot file."""
    logger = get_run_logger()
    known = stage_names(repo)
    keys: list[str] = []
    for name in stages:
        info = known.get(name)
        if info is None:
            continue
        rows: list[dict[str, Any]] = []
        for rel in info.metrics:
            path = repo / rel
            if not path.is_file():
                logger.info("stage %s: metrics file %s does not exist (yet)", name, rel)
                continue
            flat: list[tuple[str, Any]] = []
            try:
                _flatten("", json.loads(path.read_text()), flat)
            except json.JSONDecodeError as err:
                logger.warning("stage %s: %s is not JSON (%s)", name, rel, err)
                continue
            rows += [{"file": rel, "metric": k, "value": v} for k, v in flat]
        if rows:
            key = artifact_key("metrics", name)
            create_table_artifact(rows[:MAX_TABLE_ROWS], key=key,
                                  description=f"Metrics of DVC stage `{name}` ({', '.join(info.metrics)})")
            keys.append(key)
        for rel in info.plots:
            keys += link_files(repo, rel, f"plot of stage `{name}`")
    return keys


def link_files(repo: Path, rel: str, what: str, limit: int = 12) -> list[str]:
    """Link artifacts (``file://`` URLs on the machine that ran the flow) for a file or a folder's media."""
    path = repo / rel
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in MEDIA_SUFFIXES)[:limit]
        targets = files or [path]
    elif path.exists():
        targets = [path]
    else:
        return []
    keys = []
    for p in targets:
        relp = p.relative_to(repo).as_posix()
        key = artifact_key("file", relp)
        create_link_artifact(p.resolve().as_uri(), link_text=relp, key=key, description=f"{what}: `{relp}`")
        keys.append(key)
    return keys


def _ci(value: Any) -> tuple[Any, Any]:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return value[0], value[1]
    return None, None


def eval_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows ``{"task", "success", "ci95_low", "ci95_high", "successes", "episodes"}`` of an evaluation
    metrics file, one per task and a last ``mean`` row.

    The shape ``vpdd eval`` writes (results/eval/metrics.json)::

        {"mean_success": 0.4, "ci95": [lo, hi], "episodes": 20,
         "tasks": {task: {"success": 0.5, "ci95": [lo, hi], "episodes": 10, "successes": 5}, ...}, ...}

    Also read: ``success_rate`` for ``success``, ``per_task`` for ``tasks``, a bare number per task, and
    ``mean_success_rate`` for ``mean_success``. A file without per-task results gives no rows.
    """
    per_task = metrics.get("tasks") or metrics.get("per_task") or {}
    if not isinstance(per_task, dict):
        return []
    rows = []
    for name, value in per_task.items():
        value = value if isinstance(value, dict) else {"success": value}
        lo, hi = _ci(value.get("ci95"))
        rows.append({"task": name, "success": value.get("success", value.get("success_rate")),
                     "ci95_low": lo, "ci95_high": hi, "successes": value.get("successes"),
                     "episodes": value.get("episodes")})
    if rows:
        mean = metrics.get("mean_success", metrics.get("mean_success_rate"))
        if mean is None:
            rates = [r["success"] for r in rows if isinstance(r["success"], (int, float))]
            mean = sum(rates) / len(rates) if rates else None
        lo, hi = _ci(metrics.get("ci95"))
        counted = [r["successes"] for r in rows if isinstance(r["successes"], int)]
        episodes = metrics.get("episodes")
        if episodes is None:
            episodes = sum(r["episodes"] or 0 for r in rows) or None
        rows.append({"task": "mean", "success": mean, "ci95_low": lo, "ci95_high": hi,
                     "successes": sum(counted) if len(counted) == len(rows) else None, "episodes": episodes})
    return rows


@task(name="publish-eval", cache_policy=NONE)
def publish_eval(repo: Path = REPO) -> list[str]:
    """The per-task success table (results/eval/**/metrics.json) and links to rollout videos, if any."""
    logger = get_run_logger()
    known = stage_names(repo)
    files = [repo / m for m in known["evaluate"].metrics] if "evaluate" in known else []
    files = [f for f in files if f.is_file()] or sorted((repo / "results" / "eval").glob("**/metrics.json"))
    if not files:
        logger.info("no evaluation results yet (results/eval/metrics.json); no success table")
        return []
    keys = []
    for f in files:
        rel = f.relative_to(repo).as_posix()
        try:
            doc = json.loads(f.read_text())
        except json.JSONDecodeError as err:
            logger.warning("%s is not JSON (%s); no success table from it", rel, err)
            continue
        rows = eval_rows(doc) if isinstance(doc, dict) else []
        if not rows:
            logger.warning("%s has no per-task results", rel)
            continue
        bench = f.parent.name if f.parent.name != "eval" else "eval"
        key = artifact_key("success", bench)
        create_table_artifact(rows, key=key, description=f"Per-task success rate (95% CI) from `{rel}`")
        keys.append(key)
    if (repo / "results" / "eval").is_dir():
        keys += link_files(repo, "results/eval", "rollout video")
    return keys


def lineage_markdown(repo: Path, run: dict[str, Any] | None) -> str:
    """This run (flow run, command, DVC experiment) over the chain data -> outputs of its stages, from
    data.dvc and dvc.lock, with the record of every output that carries one (vpdd.lineage.render)."""
    from vpdd.lineage import data_version, outputs_markdown
    from vpdd.utils.machine import git_commit

    data = data_version(repo)
    git = git_commit(str(repo))
    lines = ["# vpdd lineage", "",
             f"- raw data (data.dvc): `{data['md5'] if data else '-'}`",
             f"- git: `{git.get('commit') or '-'}`{' (dirty)' if git.get('dirty') else ''}",
             f"- Prefect flow run: `{flow_run.get_id() or '-'}` ({flow_run.get_name() or '-'})"]
    if run:
        lines += [f"- command: `{' '.join(run['command'])}`",
                  f"- DVC experiment: `{run.get('experiment') or '-'}`",
                  f"- ran: {', '.join(run['ran']) or 'nothing (all up to date)'}"]
    lines += ["", *outputs_markdown(repo, run.get("stages") if run else None)]
    return "\n".join(lines) + "\n"


@task(name="publish-lineage", cache_policy=NONE)
def publish_lineage(run: dict[str, Any] | None, repo: Path = REPO) -> str:
    key = "lineage"
    create_markdown_artifact(lineage_markdown(repo, run), key=key,
                             description="Raw-data version -> DVC outputs of this run (data.dvc, dvc.lock)")
    return key
