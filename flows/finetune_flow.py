"""Flow ``vpdd-finetune``.

Fine-tuning on robot demonstrations: DVC stage finetune (the policy checkpoint with its lineage.json;
its lineage appears in the run's `lineage` artifact).

Parameters: see :func:`dvc_tasks.stage_flow_body` (``overrides`` make the run a named DVC experiment).
"""

from __future__ import annotations

from dvc_tasks import stage_flow_body
from prefect import flow

STAGES = ["finetune"]


@flow(name="vpdd-finetune", log_prints=True)
def finetune_flow(
    overrides: list[str] | None = None,
    exp_name: str | None = None,
    force: bool = False,
    fetch: bool = True,
    push: bool = False,
) -> dict:
    """Fine-tuning on robot demonstrations: DVC stage finetune (the policy checkpoint with its lineage.json;
    its lineage appears in the run's `lineage` artifact).
    """
    return stage_flow_body(STAGES, overrides, exp_name, force, fetch, push)


if __name__ == "__main__":
    finetune_flow()
