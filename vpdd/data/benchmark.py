"""Collection throughput: rendered frames per second per core, measured end to end.

Each measurement runs the real collector (scripted expert + physics + offscreen rendering + writing the
episode files) in a temporary folder, once with one worker (frames/s on one core) and once with one
worker per core.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

from vpdd.utils.io import atomic_write_json
from vpdd.utils.machine import machine_record

log = logging.getLogger(__name__)
DEFAULT_TASKS = ["drawer-close-v3", "button-press-topdown-v3", "plate-slide-v3", "handle-press-v3"]


def measure(tasks: list[str], demos: int, resolution: int, workers: int, fast_render: bool) -> dict[str, float]:
    from vpdd.data.collect import CollectSpec, collect_metaworld

    spec = CollectSpec(tasks=tasks, demos_per_task=demos, resolution=resolution, fast_render=fast_render,
                       crop=0.5417, steps_after_success=-1, max_steps=150)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = collect_metaworld(spec, Path(tmp) / "out", workers=workers, progress=False)
        seconds = time.perf_counter() - start
    fps = report["frames"] / seconds
    return {"workers": workers, "frames": report["frames"], "seconds": round(seconds, 3),
            "frames_per_s": round(fps, 1), "frames_per_s_per_core": round(fps / workers, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vpdd bench collect", description=__doc__)
    p.add_argument("--out", default="benchmarks/results/collect_metaworld.json")
    p.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS)
    p.add_argument("--demos", type=int, default=2, help="demonstrations per task")
    p.add_argument("--resolution", type=int, default=96)
    args = p.parse_args(argv)
    cores = os.cpu_count() or 1
    runs = []
    # MuJoCo's default render settings are ~10x slower: one episode is enough to show it.
    plan = ((1, True, args.tasks, args.demos), (min(cores, len(args.tasks)), True, args.tasks, args.demos),
            (1, False, args.tasks[:1], 1))
    for workers, fast, tasks, demos in plan:
        log.info("measuring workers=%d fast_render=%s", workers, fast)
        runs.append({"fast_render": fast, **measure(tasks, demos, args.resolution, workers, fast)})
    result = {
        "benchmark": "collect-metaworld throughput",
        "command": "vpdd bench collect " + " ".join(argv or []),
        "settings": {"tasks": args.tasks, "demos_per_task": args.demos, "resolution": args.resolution,
                     "camera": "corner2", "episode_steps": 150,
                     "render": "MUJOCO_GL=" + os.environ.get("MUJOCO_GL", "egl")},
        "target": ">= 100 rendered frames/s per core at 96x96 (fast render settings)",
        "runs": runs,
        "machine": machine_record(),
    }
    atomic_write_json(args.out, result)
    for r in runs:
        print(f"workers={r['workers']} fast_render={r['fast_render']}: {r['frames_per_s']} frames/s "
              f"({r['frames_per_s_per_core']} per core, {r['frames']} frames in {r['seconds']} s)")
    print(f"wrote {args.out}")
    return 0
