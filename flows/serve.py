"""Serve every vpdd flow as a deployment of this checkout, from one long-lived process.

    python flows/serve.py [--name local] [--limit 1]       (or: vpdd serve)

Deployments ``vpdd-data/local``, ``vpdd-tokenize/local``, ``vpdd-pretrain/local``, ``vpdd-finetune/local``,
``vpdd-evaluate/local``, ``vpdd-bench-kernels/local``, ``vpdd-pipeline/local`` and ``vpdd-study/local``
appear in the Prefect UI; its Run button starts them in subprocesses of this process. ``limit=1`` keeps one
flow run (one DVC writer) at a time; others wait. The server is the one ``PREFECT_API_URL`` names
(``vpdd serve --with-server`` starts a local one).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def deployments(name: str) -> list:
    from bench_flow import bench_kernels_flow
    from pipeline_flow import data_flow, evaluate_flow, finetune_flow, pipeline_flow, pretrain_flow, tokenize_flow
    from study_flow import study_flow

    flows = (data_flow, tokenize_flow, pretrain_flow, finetune_flow, evaluate_flow, bench_kernels_flow,
             pipeline_flow, study_flow)
    return [f.to_deployment(name=name, tags=["vpdd", "dvc"], description=f.description) for f in flows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="local", help="deployment name (default: local)")
    parser.add_argument("--limit", type=int, default=1, help="flow runs at a time (default 1: one DVC writer)")
    args = parser.parse_args(argv)
    # Entrypoints are recorded relative to the working directory: flows/<file>.py:<flow>.
    os.chdir(ROOT)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from prefect import serve

    serve(*deployments(args.name), limit=args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
