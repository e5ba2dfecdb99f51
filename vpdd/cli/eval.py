"""``vpdd eval``: closed-loop success (``run``) and video-prediction quality (``video``), docs/evaluation.md.

    vpdd eval run --policy models/policy --params params.yaml --out results/eval \\
        [--tasks T ...] [--episodes N] [--seeds 0 1 2] [--n-envs B] [--execute-steps K] [--sampling-stride S]
    vpdd eval compare results/ablation/*/metrics.json --names ... --out results/ablation/table.md

``run`` reads the ``eval`` and ``env`` sections of the params file; command-line options override them
(for quick looks; DVC stages use the params so that changing them reruns the stage).
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    from vpdd.cli.common import add_params_arg
    from vpdd.cli.eval_video import register_video

    p = sub.add_parser("eval", help="evaluate a policy: closed-loop success, video-prediction quality")
    sp = p.add_subparsers(dest="eval_cmd", required=True)
    r = sp.add_parser("run", help="closed-loop Meta-World evaluation (success rates, 95%% CIs, rollout videos)")
    r.add_argument("--policy", required=True, help="fine-tuned policy directory (e.g. models/policy)")
    add_params_arg(r)
    r.add_argument("--out", required=True, help="output folder (metrics.json, success.png, videos/)")
    r.add_argument("--tasks", nargs="+", help="tasks (default: eval.tasks, else the policy's fine-tuning tasks)")
    r.add_argument("--episodes", type=int, help="episodes per task and seed (default: eval.episodes_per_task)")
    r.add_argument("--seeds", type=int, nargs="+", help="evaluation seeds (default: eval.seeds)")
    r.add_argument("--max-steps", type=int, help="episode limit (default: eval.max_steps)")
    r.add_argument("--n-envs", type=int, help="environments per batched policy call (default: eval.n_envs)")
    r.add_argument("--execute-steps", type=int, help="actions executed per predicted chunk (eval.execute_steps)")
    r.add_argument("--sampling-stride", type=int, help="reverse-diffusion stride (default: eval.sampling_stride)")
    r.add_argument("--videos", type=int, help="rollout videos per task and seed (default: eval.videos_per_task)")
    r.add_argument("--device", default="cpu", help="cpu | cuda (default: cpu)")
    r.set_defaults(func=_run)
    c = sp.add_parser("compare", help="a markdown table comparing several evaluations (e.g. the ablation)")
    c.add_argument("metrics", nargs="+", help="metrics.json files written by `vpdd eval run`, or REV:PATH for the "
                   "file in a git revision or DVC experiment (e.g. no-pretrain:results/eval/metrics.json)")
    c.add_argument("--names", nargs="+", help="a row name per file (default: the file's folder)")
    c.add_argument("--out", help="write the table here (markdown) as well as printing it")
    c.set_defaults(func=_compare)
    register_video(sp)


def _run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from vpdd.cli.common import params
    from vpdd.config.base import validate_tree
    from vpdd.eval.report import EvalSettings, evaluate

    cfg = params(args)
    ev = cfg.eval

    def pick(cli, default):
        return default if cli is None else cli

    settings = EvalSettings(
        tasks=list(pick(args.tasks, ev.tasks)), episodes_per_task=pick(args.episodes, ev.episodes_per_task),
        seeds=list(pick(args.seeds, ev.seeds)), max_steps=pick(args.max_steps, ev.max_steps),
        n_envs=pick(args.n_envs, ev.n_envs), execute_steps=pick(args.execute_steps, ev.execute_steps),
        sampling_stride=pick(args.sampling_stride, ev.sampling_stride),
        videos_per_task=pick(args.videos, ev.videos_per_task), device=args.device, kernel_impl=cfg.kernel.impl,
    )
    problems = validate_tree(type(ev)(**{k: v for k, v in asdict(settings).items()
                                         if k not in ("device", "kernel_impl")}), "eval.")
    if problems:
        print("vpdd eval run: error: " + "; ".join(problems), file=sys.stderr)
        return 2
    metrics = evaluate(args.policy, settings, asdict(cfg.env), args.out, progress=sys.stderr.isatty())
    print(format_summary(metrics))
    return 0


def format_summary(metrics: dict) -> str:
    lines = [f"{'task':28s} success  95% CI          episodes"]
    for task, v in metrics["tasks"].items():
        lines.append(f"{task:28s} {v['success']:.3f}    [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]  {v['episodes']}")
    lines.append(f"{'mean':28s} {metrics['mean_success']:.3f}    [{metrics['ci95'][0]:.3f}, {metrics['ci95'][1]:.3f}]  "
                 f"{metrics['episodes']}")
    t = metrics["timing"]
    lines.append(f"{t['s_per_env_step'] * 1000:.1f} ms per environment step ({t['policy_s_per_call']:.3f} s per "
                 f"batched policy call, {t['wall_s']:.0f} s in all)")
    return "\n".join(lines)


def _compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vpdd.eval.compare import comparison_table, read_metrics
    from vpdd.utils.io import atomic_write_text

    names = args.names or [m.split(":")[0] if ":" in m and not Path(m).exists() else Path(m).parent.name
                           for m in args.metrics]
    if len(names) != len(args.metrics):
        print(f"vpdd eval compare: error: {len(names)} names for {len(args.metrics)} metrics files", file=sys.stderr)
        return 2
    rows = []
    for name, path in zip(names, args.metrics, strict=True):
        try:
            rows.append((name, read_metrics(path)))
        except (OSError, ValueError) as err:
            print(f"vpdd eval compare: error: {path}: not a readable metrics.json ({err})", file=sys.stderr)
            return 2
    table = comparison_table(rows)
    if args.out:
        atomic_write_text(args.out, table + "\n")
    print(table)
    return 0
