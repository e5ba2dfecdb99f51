"""Flow ``vpdd-evaluate``.

Evaluation: DVC stage evaluate, then the per-task success table (`success-*` artifact) and links to
the rollout videos.

Parameters: see :func:`dvc_tasks.stage_flow_body` (``overrides`` make the run a named DVC experiment).
"""

from __future__ import annotations

from dvc_tasks import stage_flow_body
from prefect import flow

STAGES = ["evaluate"]


@flow(name="vpdd-evaluate", log_prints=True)
def evaluate_flow(
    overrides: list[str] | None = None,
    exp_name: str | None = None,
    force: bool = False,
    fetch: bool = True,
    push: bool = False,
) -> dict:
    """Evaluation: DVC stage evaluate, then the per-task success table (`success-*` artifact) and links to
    the rollout videos.
    """
    return stage_flow_body(STAGES, overrides, exp_name, force, fetch, push, evaluation=True)


if __name__ == "__main__":
    evaluate_flow()
