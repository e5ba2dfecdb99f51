"""Flow ``vpdd-pipeline``: the whole pipeline, i.e. whatever ``dvc repro`` runs.

``vpdd data fetch`` first (idempotent, retried), then ``dvc repro`` (or, with ``overrides``, ``dvc exp run -n
EXP -S key=value ...``) over every stage of dvc.yaml, or over ``targets`` and their upstream stages. Then a
metrics table per stage, links to plots, the per-task success table once evaluation exists, the lineage
markdown, and optionally ``dvc push``.
"""

from __future__ import annotations

from dvc_tasks import stage_flow_body
from prefect import flow


@flow(name="vpdd-pipeline", log_prints=True)
def pipeline_flow(
    overrides: list[str] | None = None,
    exp_name: str | None = None,
    targets: list[str] | None = None,
    force: bool = False,
    fetch: bool = True,
    push: bool = False,
) -> dict:
    """The whole DVC pipeline (`dvc repro`, or a named `dvc exp run` with overrides), then its artifacts.
    ``targets`` limits the run to these stages and what they depend on.
    """
    return stage_flow_body(list(targets or []), overrides, exp_name, force, fetch, push, evaluation=True)


if __name__ == "__main__":
    pipeline_flow()
