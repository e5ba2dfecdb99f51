"""Flow ``vpdd-pretrain``.

Pre-training the video-prediction diffusion model on actionless video: DVC stage pretrain
(models/pretrain).

Parameters: see :func:`dvc_tasks.stage_flow_body` (``overrides`` make the run a named DVC experiment).
"""

from __future__ import annotations

from dvc_tasks import stage_flow_body
from prefect import flow

STAGES = ["pretrain"]


@flow(name="vpdd-pretrain", log_prints=True)
def pretrain_flow(
    overrides: list[str] | None = None,
    exp_name: str | None = None,
    force: bool = False,
    fetch: bool = True,
    push: bool = False,
) -> dict:
    """Pre-training the video-prediction diffusion model on actionless video: DVC stage pretrain
    (models/pretrain).
    """
    return stage_flow_body(STAGES, overrides, exp_name, force, fetch, push)


if __name__ == "__main__":
    pretrain_flow()
