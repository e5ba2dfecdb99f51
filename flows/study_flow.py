"""Flow ``vpdd-study``: ``vpdd study run`` (the pre-training study, docs/study.md), then its table and plot.

Not a DVC stage: the study runs for hours, in parts (a run continues where the last one stopped), and writes
its committed records under ``results/study/<name>/``. While it runs, a progress artifact counts the finished
cells (from the ``[k/n] ...`` lines ``vpdd study run`` prints); at the end, the study's ``table.md`` becomes a
markdown artifact and ``success.png`` an image card.

Parameters:

- ``spec``: the study file (default ``conf/study/pretraining.yaml``);
- ``demos`` / ``arms``: only those cells (default: all);
- ``max_cells``: stop after this many cells (default: all pending);
- ``jobs``: cells at once (default: the study's own ``jobs``).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from artifacts_tasks import publish_files
from dvc_tasks import REPO, StageFailed, artifact_key, stream_command
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NONE

DEFAULT_SPEC = "conf/study/pretraining.yaml"
PROGRESS = re.compile(r"^\[(\d+)/(\d+)\] ")


def study_argv(spec: str, demos: list[int] | None, arms: list[str] | None, max_cells: int | None,
               jobs: int | None) -> list[str]:
    argv = ["vpdd", "study", "run", spec]
    if demos:
        argv += ["--demos", *(str(int(d)) for d in demos)]
    if arms:
        argv += ["--arms", *arms]
    if max_cells is not None:
        argv += ["--max-cells", str(int(max_cells))]
    if jobs is not None:
        argv += ["--jobs", str(int(jobs))]
    return argv


def progress_of(line: str) -> float | None:
    """Percent of the run's cells finished, from a ``[k/n] cell: ...`` line of ``vpdd study run``."""
    m = PROGRESS.match(line)
    return None if m is None else 100.0 * int(m.group(1)) / max(1, int(m.group(2)))


def study_name(spec: str, repo: Path = REPO) -> str:
    try:
        return str(yaml.safe_load((repo / spec).read_text())["name"])
    except (OSError, KeyError, TypeError, yaml.YAMLError) as err:
        raise StageFailed(f"{spec}: not a readable study file ({err})") from None


@task(name="study-run", cache_policy=NONE)  # no retries: the study itself resumes where it stopped
def run_study(argv: list[str], repo: Path = REPO) -> None:
    progress = create_progress_artifact(0.0, key=artifact_key("study", "progress"),
                                        description=f"cells finished by `{' '.join(argv)}`")

    def on_line(line: str) -> None:
        if (pct := progress_of(line)) is not None:
            update_progress_artifact(progress, pct)

    rc, _, err_tail = stream_command(argv, repo, on_line=on_line)
    if rc != 0:
        raise StageFailed(f"`{' '.join(argv)}` exited with {rc}. stderr tail:\n" + "\n".join(err_tail))


@task(name="publish-study", cache_policy=NONE)
def publish_study(name: str, repo: Path = REPO) -> list[str]:
    results = Path("results/study") / name
    keys = []
    table = repo / results / "table.md"
    if table.is_file():
        key = artifact_key("study", name, "table")
        create_markdown_artifact(f"### Study `{name}`\n\n{table.read_text()}", key=key,
                                 description=f"`{results}/table.md`")
        keys.append(key)
    return keys + publish_files(repo, f"{results}/success.png", "success against demonstrations")


@flow(name="vpdd-study", log_prints=True,
      description="The pre-training study: vpdd study run (resumable, not a DVC stage), its table and plot.")
def study_flow(
    spec: str = DEFAULT_SPEC,
    demos: list[int] | None = None,
    arms: list[str] | None = None,
    max_cells: int | None = None,
    jobs: int | None = None,
) -> dict:
    """The pre-training study: `vpdd study run` (resumable, not a DVC stage), then its table and plot.

    Args:
        spec: string, the study file relative to the checkout (default conf/study/pretraining.yaml).
        demos: list of integers, only cells with these demonstrations per task (default: all).
        arms: list of strings, only these arms (default: all).
        max_cells: integer, stop after this many cells (default: every pending cell).
        jobs: integer, cells at once (default: the study's own jobs).
    """
    name = study_name(spec)
    argv = study_argv(spec, demos, arms, max_cells, jobs)
    run_study(argv)
    return {"command": argv, "artifacts": publish_study(name)}


if __name__ == "__main__":
    study_flow()
