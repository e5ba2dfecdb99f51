"""Tasks that publish what a run produced as Prefect artifacts, in pipeline order: per stage a metrics table
and one card per figure (embedded, flows/media_tasks.py) or per curve folder (drawn as one chart); then the
per-task success table and one card per rollout video; last the run's lineage markdown. They read files;
they run nothing.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from dvc_tasks import REPO, artifact_key, stage_names
from media_tasks import media_files, media_markdown
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

MAX_TABLE_ROWS = 200


def _flatten(prefix: str, node: Any, rows: list[tuple[str, Any]]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, rows)
    elif isinstance(node, list) and len(node) > 8:
        rows.append((prefix, f"[{len(node)} values]"))
    else:
        rows.append((prefix, node if isinstance(node, (int, float, str, bool)) or node is None else json.dumps(node)))


def expand_names(names: list[str], known: dict[str, Any]) -> list[str]:
    """Stage names as in ``known`` (expanded ``name@value``): a matrix stage's own name stands for all of its
    expansions; unknown names are dropped."""
    out: list[str] = []
    for name in names:
        out += [name] if name in known else [k for k in known if k.partition("@")[0] == name]
    return list(dict.fromkeys(out))


def curves_png(folder: Path) -> bytes | None:
    """The training curves of a DVCLive plots folder (``<metric>.tsv``: step, value) as one PNG chart."""
    series = []
    for tsv in sorted(folder.rglob("*.tsv")):
        rows = [line.split("\t") for line in tsv.read_text().splitlines()[1:] if line.strip()]
        try:
            series.append((tsv.relative_to(folder).with_suffix("").as_posix(),
                           [float(r[0]) for r in rows], [float(r[1]) for r in rows]))
        except (ValueError, IndexError):
            continue
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(series))
    rows_n = -(-len(series) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.2 * cols, 2.3 * rows_n), squeeze=False)
    for ax, (name, x, y) in zip(axes.flat, series, strict=False):
        ax.plot(x, y, lw=1.2)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(series):]:
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def publish_files(repo: Path, rel: str, what: str) -> list[str]:
    """One markdown card per media file of ``rel`` (a file or a folder, all of its files, sorted), or for a
    folder of curves, one card with the curves drawn; nothing when ``rel`` does not exist."""
    import base64

    path = repo / rel
    keys = []
    files = media_files(path)
    if not files and path.is_dir() and (png := curves_png(path)):
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        key = artifact_key("curves", rel)
        create_markdown_artifact(f"### {what}: `{rel}`\n\n![{rel}]({uri})\n\nInteractive: `dvc plots show {rel}`\n",
                                 key=key, description=f"{what}: `{rel}`")
        return [key]
    for p in files:
        relp = p.relative_to(repo).as_posix()
        key = artifact_key("media", relp)
        create_markdown_artifact(media_markdown(repo, p, what), key=key, description=f"{what}: `{relp}`")
        keys.append(key)
    return keys


@task(name="publish-stage-artifacts", cache_policy=NONE)
def publish_stage_artifacts(stages: list[str], repo: Path = REPO) -> list[str]:
    """A metrics table per stage (its metrics JSON files in dvc.yaml), then a card per figure or curve folder."""
    logger = get_run_logger()
    known = stage_names(repo)
    keys: list[str] = []
    for name in expand_names(stages, known):
        info = known[name]
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
            if len(rows) > MAX_TABLE_ROWS:
                logger.warning("stage %s: %d metrics, the table shows the first %d", name, len(rows), MAX_TABLE_ROWS)
            create_table_artifact(rows[:MAX_TABLE_ROWS], key=key,
                                  description=f"Metrics of DVC stage `{name}` ({', '.join(info.metrics)})")
            keys.append(key)
        for rel in info.plots:
            keys += publish_files(repo, rel, f"stage `{name}`")
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
    """The per-task success table (results/eval/**/metrics.json) and a card per rollout video, if any."""
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
    # The rollout videos: the evaluate stage's folder outputs only (its figures came with its plots).
    for rel in known["evaluate"].outs if "evaluate" in known else ["results/eval/videos"]:
        if (repo / rel).is_dir():
            keys += publish_files(repo, rel, "rollout video")
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
