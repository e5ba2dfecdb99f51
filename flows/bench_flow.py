"""Flow ``vpdd-bench-kernels``.

Kernel benchmarks: DVC stage bench_kernels (Triton against PyTorch timings, written with the GPU name,
versions and date).

Parameters: see :func:`dvc_tasks.stage_flow_body` (``overrides`` make the run a named DVC experiment).
"""

from __future__ import annotations

from dvc_tasks import stage_flow_body
from prefect import flow

STAGES = ["bench_kernels"]


@flow(name="vpdd-bench-kernels", log_prints=True)
def bench_kernels_flow(
    overrides: list[str] | None = None,
    exp_name: str | None = None,
    force: bool = False,
    fetch: bool = True,
    push: bool = False,
) -> dict:
    """Kernel benchmarks: DVC stage bench_kernels (Triton against PyTorch timings, written with the GPU name,
    versions and date).
    """
    return stage_flow_body(STAGES, overrides, exp_name, force, fetch, push)


if __name__ == "__main__":
    bench_kernels_flow()
