"""Control-rate trade-offs of a policy: success against seconds per control step, written to a results file.

    vpdd bench control --policy models/policy [--params params.yaml] [--strides 1 10 25] [--execute 1 4]
                       [--n-envs 1 10] [--episodes 10] [--seeds 0] [--tasks ...] [--timing-only-stride 1]
                       [--out benchmarks/results/control_rate_cpu.json]

Each combination (reverse-diffusion stride, actions executed per predicted chunk, environments per batched
policy call) is a full closed-loop evaluation (:func:`vpdd.eval.report.evaluate`) on the same scenes, so
the success rates are comparable; its time per environment step includes rendering, physics and the
policy. Combinations whose stride is in ``--timing-only-stride`` (the paper's 100-step sampling is minutes
per episode on a CPU) are timed on a few control steps instead and report no success rate.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def _timing_only(policy_dir: str, stride: int, execute: int, n_envs: int, steps: int, device: str) -> dict[str, Any]:
    """Seconds per environment step of the policy alone (plus a measured per-step environment cost)."""
    import numpy as np

    from vpdd.policy import VPDDPolicy

    policy = VPDDPolicy.from_pretrained(policy_dir, device=device, sampling_stride=stride, execute_steps=execute)
    frames = np.zeros((n_envs, policy.resolution, policy.resolution, 3), np.uint8)
    text = "Press a button from the top."
    policy.reset(seed=0)
    policy.select_action(frames, text)  # warm-up
    policy.reset(seed=0)
    start = time.perf_counter()
    for _ in range(steps):
        policy.select_action(frames, text)
    per_step = (time.perf_counter() - start) / steps / n_envs
    return {"policy_s_per_env_step": per_step}


def main(argv: list[str] | None = None) -> int:
    import torch

    from vpdd.config import load_config
    from vpdd.eval.report import EvalSettings, evaluate
    from vpdd.utils.io import atomic_write_json
    from vpdd.utils.machine import machine_record

    p = argparse.ArgumentParser(prog="vpdd bench control", description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", required=True)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--strides", type=int, nargs="+", default=[1, 10, 25])
    p.add_argument("--execute", type=int, nargs="+", default=[1, 4])
    p.add_argument("--n-envs", type=int, nargs="+", default=[10])
    p.add_argument("--episodes", type=int, default=10, help="episodes per task and seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--tasks", nargs="+", default=[])
    p.add_argument("--timing-only-stride", type=int, nargs="*", default=[1],
                   help="strides that are only timed (no success rate)")
    p.add_argument("--timing-steps", type=int, default=8, help="control steps timed per timing-only combination")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.params)
    env_cfg = {k: getattr(cfg.env, k) for k in cfg.env.__dataclass_fields__}
    rows = []
    scratch = Path(tempfile.mkdtemp(prefix="vpdd_control_rate_"))  # per-run eval outputs; only the table is kept
    for stride, execute, n_envs in itertools.product(args.strides, args.execute, args.n_envs):
        row: dict[str, Any] = {"sampling_stride": stride, "reverse_steps": -(-cfg.diffusion.num_timesteps // stride),
                               "execute_steps": execute, "n_envs": n_envs}
        if stride in args.timing_only_stride:
            row.update(_timing_only(args.policy, stride, execute, n_envs, args.timing_steps, args.device))
            row["success"] = None
        else:
            settings = EvalSettings(tasks=list(args.tasks), episodes_per_task=args.episodes, seeds=list(args.seeds),
                                    max_steps=cfg.eval.max_steps, n_envs=n_envs, execute_steps=execute,
                                    sampling_stride=stride, videos_per_task=0, device=args.device)
            m = evaluate(args.policy, settings, env_cfg, scratch / f"s{stride}_e{execute}_b{n_envs}", progress=False)
            row.update({"success": m["mean_success"], "ci95": m["ci95"], "episodes": m["episodes"],
                        "s_per_env_step": m["timing"]["s_per_env_step"],
                        "policy_s_per_env_step": m["timing"]["policy_s_per_call"] * m["timing"]["policy_calls"]
                        / max(1, m["timing"]["env_steps"]),
                        "env_s_per_step": m["timing"]["env_s_per_step"]})
        print(json.dumps(row), flush=True)
        rows.append(row)
    shutil.rmtree(scratch, ignore_errors=True)
    device = "cuda" if args.device.startswith("cuda") else "cpu"
    out = Path(args.out or f"benchmarks/results/control_rate_{device}.json")
    record = {"benchmark": "control_rate", "policy": args.policy, "tasks": args.tasks or "the policy's tasks",
              "episodes_per_task_and_seed": args.episodes, "seeds": args.seeds, "max_steps": cfg.eval.max_steps,
              "rows": rows, "machine": machine_record(), "torch_threads": torch.get_num_threads(),
              "date": datetime.now(UTC).isoformat(timespec="seconds")}
    atomic_write_json(out, record)
    print(f"wrote {out}")
    return 0
