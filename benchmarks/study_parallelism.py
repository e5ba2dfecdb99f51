"""How to spend two cores on a study: one two-thread process or two one-thread processes (docs/study.md)?

    python benchmarks/study_parallelism.py --steps 150 --episodes 4 --out benchmarks/results/study_parallelism_cpu.json

Runs the work of a study cell in both layouts on the real pipeline artefacts (build/tokens, models/tokenizer,
models/pretrain, data/metaworld): a ``vpdd train finetune`` of ``--steps`` steps and a ``vpdd eval run`` of
``--episodes`` episodes per task, (a) once with OMP_NUM_THREADS=2, (b) twice at the same time with
OMP_NUM_THREADS=1 each. Writes cells per hour of each layout (two cells in (b)) with the machine record.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def _cell(d: Path, params: dict, threads: int, steps: int, episodes: int) -> subprocess.Popen:
    d.mkdir(parents=True, exist_ok=True)
    p = json.loads(json.dumps(params))
    p["finetune"].update(steps=steps, checkpoint_every=steps, log_every=max(1, steps // 4))
    p["eval"].update(episodes_per_task=episodes, seeds=[0], videos_per_task=0)
    (d / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    script = (f"vpdd train finetune --params {d}/params.yaml --tokens build/tokens --tokenizer models/tokenizer "
              f"--robot data/metaworld --pretrained models/pretrain --out {d}/policy --device cpu && "
              f"vpdd eval run --policy {d}/policy --params {d}/params.yaml --out {d}/eval")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen(["bash", "-c", script], env=env, stdout=subprocess.DEVNULL, stderr=open(d / "log.txt", "w"))


def _timed(procs: list[subprocess.Popen]) -> float:
    t0 = time.time()
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"a benchmark cell failed (exit codes {codes}); see its log.txt")
    return time.time() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--episodes", type=int, default=4, help="episodes per task")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="benchmarks/results/study_parallelism_cpu.json")
    args = ap.parse_args(argv)
    from vpdd.utils.io import atomic_write_json
    from vpdd.utils.machine import machine_record

    params = yaml.safe_load(Path(args.params).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        one = _timed([_cell(Path(tmp) / "one", params, 2, args.steps, args.episodes)])
        two = _timed([_cell(Path(tmp) / f"two{k}", params, 1, args.steps, args.episodes) for k in range(2)])
    result = {
        "what": f"one study cell's work ({args.steps} fine-tuning steps + {args.episodes} episodes per task)",
        "one_process_two_threads": {"wall_s": round(one, 1), "cells_per_hour": round(3600 / one, 2)},
        "two_processes_one_thread": {"wall_s": round(two, 1), "cells_per_hour": round(2 * 3600 / two, 2)},
        "speedup_two_processes": round(2 * one / two, 2),
        "machine": machine_record(),
    }
    atomic_write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
