"""Flow ``vpdd-data``.

Raw data and the data stages: `vpdd data fetch` (data/ as pinned by data.dvc), then the DVC stages
inspect_robot_data (validated robot episodes) and ingest_videos (the actionless clip corpus).

Parameters: see :func:`dvc_tasks.stage_flow_body` (``overrides`` make the run a named DVC experiment).
"""

from __future__ import annotations

from dvc_tasks import stage_flow_body
from prefect import flow

STAGES = ["inspect_robot_data", "ingest_videos"]


@flow(name="vpdd-data", log_prints=True)
def data_flow(
    overrides: list[str] | None = None,
    exp_name: str | None = None,
    force: bool = False,
    fetch: bool = True,
    push: bool = False,
) -> dict:
    """Raw data and the data stages: `vpdd data fetch` (data/ as pinned by data.dvc), then the DVC stages
    inspect_robot_data (validated robot episodes) and ingest_videos (the actionless clip corpus).
    """
    return stage_flow_body(STAGES, overrides, exp_name, force, fetch, push)


if __name__ == "__main__":
    data_flow()
