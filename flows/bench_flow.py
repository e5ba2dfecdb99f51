"""Flow ``vpdd-bench-kernels``: ``vpdd bench kernels`` (fused Triton kernels against the PyTorch maths), then
its results as a table artifact and a link to its plot.

Not a DVC stage, on purpose: a benchmark measures the machine it runs on, so "up to date" in DVC's sense
(same code, same params) says nothing about a run on another GPU, and the pipeline's ``dvc repro`` must not
spend minutes timing kernels. The benchmark writes ``benchmarks/results/kernels_<cpu|gpu>.json`` (with the
GPU name, versions and date) and a ``.png`` beside it, kept in git like the other benchmark results. Served
with ``limit=1`` (flows/serve.py), no training run shares the machine while it times.

Parameters:

- ``device``: ``auto`` (CUDA when there is one), ``cuda`` or ``cpu``;
- ``quick``: CPU-sized shapes (``--quick``);
- ``ops``: a subset of ``posterior reverse_step q_sample loss`` (default: all);
- ``args``: further options of ``vpdd bench kernels`` (e.g. ``["--K", "1024", "--repeats", "3"]``);
- ``out``: the results file, relative to the checkout (default: the benchmark's own choice).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from artifacts_tasks import MAX_TABLE_ROWS, publish_files
from dvc_tasks import REPO, StageFailed, artifact_key, stream_command
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE

RESULTS = Path("benchmarks/results")
COLUMNS = ("op", "provider", "mode", "dtype", "B", "N", "K", "status", "ms_p50", "ms_p20", "ms_p80", "GBps",
           "frac_roofline", "peak_MB", "speedup_vs_eager")


def bench_argv(device: str, quick: bool, ops: list[str] | None, args: list[str] | None, out: str | None) -> list[str]:
    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device={device!r}: expected auto, cuda or cpu")
    argv = ["vpdd", "bench", "kernels", "--device", device]
    if quick:
        argv.append("--quick")
    if ops:
        argv += ["--ops", *ops]
    if out:
        argv += ["--out", out]
    return argv + list(args or [])


def bench_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One table row per measured case of a ``vpdd bench kernels`` results file (fixed columns)."""
    return [{c: r.get(c) for c in COLUMNS} for r in record.get("results") or [] if isinstance(r, dict)]


def bench_description(record: dict[str, Any], rel: str) -> str:
    machine = record.get("machine") or {}
    gpus = ", ".join(str(g.get("name", g)) if isinstance(g, dict) else str(g) for g in machine.get("gpus") or [])
    versions = machine.get("versions") or {}
    return (f"`{rel}` ({record.get('command') or 'vpdd bench kernels'}): device {record.get('device')}, "
            f"{gpus or machine.get('cpu') or '?'}, torch {versions.get('torch')}, triton {versions.get('triton')}, "
            f"{machine.get('date')}; correctness {record.get('correctness')}")


@task(name="bench-kernels", cache_policy=NONE)  # no retries: a failing benchmark is a result to look at
def run_benchmark(argv: list[str], out: str | None, repo: Path = REPO) -> list[str]:
    """Run the benchmark; return the results files it wrote (relative to ``repo``)."""
    start = time.time()
    rc, _, err_tail = stream_command(argv, repo)
    if rc != 0:
        raise StageFailed(f"kernel benchmark failed (`{' '.join(argv)}` exited with {rc}). stderr tail:\n"
                          + "\n".join(err_tail))
    if out:
        return [out]
    return sorted(p.relative_to(repo).as_posix() for p in (repo / RESULTS).glob("kernels_*.json")
                  if p.stat().st_mtime >= start - 1)


@task(name="publish-bench", cache_policy=NONE)
def publish_bench(files: list[str], repo: Path = REPO) -> list[str]:
    logger = get_run_logger()
    keys = []
    for rel in files:
        path = repo / rel
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            logger.warning("%s: no benchmark results to show (%s)", rel, err)
            continue
        rows = bench_rows(record)
        if rows:
            key = artifact_key("bench", Path(rel).stem)
            create_table_artifact(rows[:MAX_TABLE_ROWS], key=key, description=bench_description(record, rel))
            keys.append(key)
        plot = path.with_suffix(".png")
        if plot.is_file():
            keys += publish_files(repo, plot.relative_to(repo).as_posix(), "kernel benchmark plot")
    return keys


@flow(name="vpdd-bench-kernels", log_prints=True)
def bench_kernels_flow(
    device: str = "auto",
    quick: bool = False,
    ops: list[str] | None = None,
    args: list[str] | None = None,
    out: str | None = None,
) -> dict:
    """Kernel benchmarks: `vpdd bench kernels` (not a DVC stage), then a results table and the plot."""
    argv = bench_argv(device, quick, ops, args, out)
    files = run_benchmark(argv, out)
    if not files:
        raise StageFailed(f"`{' '.join(argv)}` finished but wrote no {RESULTS}/kernels_*.json")
    return {"command": argv, "results": files, "artifacts": publish_bench(files)}


if __name__ == "__main__":
    bench_kernels_flow()
