"""Held-out action error of VPDD policies under several action-decoding settings (the offline half of the
decoding study in docs/evaluation.md, "Action decoding").

    python benchmarks/action_decoding.py --params params.yaml --policies models/policy RUN/seed1/policy ... \\
        [--setting sampled:0.88:10 --setting greedy:1e-6:10 --setting greedy_one_step:1e-6:100] \\
        [--episodes build/decoding_heldout] [--out benchmarks/results/action_decoding_cpu.json]

A setting is ``NAME:TRUNCATION_R:SAMPLING_STRIDE``: the top-r truncation of every reverse step's x0
prediction (a tiny r keeps only the most probable class: greedy decoding) and the reverse-diffusion stride
(the number of timesteps, 100 in both presets, gives one step from all-[MASK]). Every policy (one per
fine-tuning seed) is scored with :func:`vpdd.eval.foresight.heldout_action_error` on the same held-out states:
``--episodes-per-task`` scripted-expert episodes per task on scenes no training data uses (collected once into
``--episodes``), ``--states`` states each, the same sampler seeds for every setting. The table gives the mean
over policies with a 95% t interval over them, and each setting's difference to the first, paired by policy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _setting(text: str) -> tuple[str, float, int]:
    try:
        name, r, stride = text.split(":")
        return name, float(r), int(stride)
    except ValueError:
        raise SystemExit(f"--setting {text!r}: expected NAME:TRUNCATION_R:SAMPLING_STRIDE, "
                         "e.g. greedy:1e-6:10") from None


def heldout_episodes(cfg, root: Path, per_task: int, seed: int) -> list:
    """The held-out scripted episodes in ``root``, collected there (atomically) the first time."""
    from vpdd.eval.scenes import training_seeds
    from vpdd.eval.video_quality import VideoEvalSettings, load_heldout
    from vpdd.study.probe import collect_episodes

    tasks = list(cfg.eval.tasks or cfg.data.robot.tasks)
    exclude = training_seeds(cfg.data.robot, tasks, "data/metaworld", cfg.data.task_video)
    if not (root / "index.json").is_file():
        settings = VideoEvalSettings(episodes_per_task=per_task, seed=seed, keep_failures=False)
        collect_episodes(cfg, root, tasks, exclude, settings, {})
    return load_heldout(root, tasks, per_task, exclude)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--policies", nargs="+", required=True, help="VPDD policy directories (one per seed)")
    p.add_argument("--setting", action="append", type=_setting, metavar="NAME:R:STRIDE")
    p.add_argument("--episodes", type=Path, default=Path("build/decoding_heldout"))
    p.add_argument("--episodes-per-task", type=int, default=4)
    p.add_argument("--states", type=int, default=12, help="states per held-out episode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/action_decoding_cpu.json"))
    args = p.parse_args(argv)
    settings = args.setting or [("sampled", 0.88, 10), ("greedy", 1e-6, 10), ("greedy_one_step", 1e-6, 100)]

    import torch

    from vpdd.config import load_config
    from vpdd.eval.foresight import heldout_action_error
    from vpdd.eval.seeds import mean_interval
    from vpdd.policy import VPDDPolicy
    from vpdd.utils.io import atomic_write_text
    from vpdd.utils.machine import machine_record

    torch.set_num_threads(1)
    cfg = load_config(args.params)
    # a policy (and with it transformers -> triton) must load before MuJoCo's EGL context exists: importing
    # triton after rendering has started crashes the process (vpdd.eval.report.load_policy)
    VPDDPolicy.from_pretrained(args.policies[0])
    episodes = heldout_episodes(cfg, args.episodes, args.episodes_per_task, args.seed)
    rows: dict[str, list[dict]] = {name: [] for name, _, _ in settings}
    for policy_dir in args.policies:
        for name, r, stride in settings:
            t0 = time.perf_counter()
            policy = VPDDPolicy.from_pretrained(policy_dir, truncation_r=r, sampling_stride=stride)
            result = heldout_action_error(policy, episodes, args.states, args.seed, batch_size=16)
            rows[name].append({"policy": str(policy_dir), **result, "seconds": round(time.perf_counter() - t0, 1)})
            print(f"{policy_dir} {name}: L1 {result['mean']:.4f}", flush=True)
    base = settings[0][0]
    summary = {}
    for name, r, stride in settings:
        means = np.array([row["mean"] for row in rows[name]])
        diff = mean_interval(means - np.array([row["mean"] for row in rows[base]]), (-np.inf, np.inf))
        summary[name] = {"truncation_r": r, "sampling_stride": stride, "mean": float(means.mean()),
                         "ci95_over_policies": mean_interval(means, (0.0, np.inf))["ci95"],
                         "minus_first": diff["mean"], "minus_first_ci95": diff["ci95"] if name != base else None,
                         "per_policy": means.tolist()}
    lines = [f"| setting (r, stride) | held-out action L1, mean over {len(args.policies)} policies [95% t] | "
             f"per policy | minus {base} [95% t, paired by policy] |", "|---|---|---|---|"]
    def interval(ci: list[float] | None, sign: str = "") -> str:  # None: a single policy has no interval
        return "" if ci is None else f" [{ci[0]:{sign}.4f}, {ci[1]:{sign}.4f}]"

    for name, s in summary.items():
        d = "-" if name == base else f"{s['minus_first']:+.4f}{interval(s['minus_first_ci95'], '+')}"
        lines.append(f"| {name} ({s['truncation_r']:g}, {s['sampling_stride']}) | {s['mean']:.4f}"
                     f"{interval(s['ci95_over_policies'])} | {' / '.join(f'{m:.3f}' for m in s['per_policy'])} "
                     f"| {d} |")
    table = "\n".join(lines)
    print(table)
    record = {"command": "python benchmarks/action_decoding.py " + " ".join(argv), "machine": machine_record(),
              "states": rows[base][0]["states"], "discretization": rows[base][0]["discretization"],
              "summary": summary, "runs": rows, "table": table}
    atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
