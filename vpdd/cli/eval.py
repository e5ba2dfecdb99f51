"""``vpdd eval``: closed-loop success (``run``), tables comparing evaluations (``compare``, ``compare --paired``)
and video-prediction quality (``video``), docs/evaluation.md.

    vpdd eval run --policy models/policy --params params.yaml --out results/eval \\
        [--tasks T ...] [--episodes N] [--seeds 0 1 2] [--n-envs B] [--execute-steps K] [--sampling-stride S]
    vpdd eval compare results/ablation/*/metrics.json --names ... --out results/ablation/table.md
    vpdd eval compare --paired build/study/{base,new}/seed{0,1,2}/eval --names base base base new new new \\
        [--out table.md] [--json study.json] [--n-boot 4000] [--seed 0]

``compare --paired`` takes eval folders (or their episodes.json); runs with the same ``--names`` value are one
arm's training seeds, in the order given, matched by position across arms; the first arm is the reference
(vpdd.eval.paired: hierarchical bootstrap over seeds and scenes, paired t and sign-flip tests).

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
    r.add_argument("--truncation-r", type=float,
                   help="top-r truncation when acting (default: eval.truncation_r, else the checkpoint's)")
    r.add_argument("--videos", type=int, help="rollout videos per task and seed (default: eval.videos_per_task)")
    r.add_argument("--device", default="cpu", help="cpu | cuda (default: cpu)")
    r.set_defaults(func=_run)
    c = sp.add_parser("compare", help="a markdown table comparing several evaluations (e.g. the ablation)")
    c.add_argument("metrics", nargs="+", metavar="RUN",
                   help="metrics.json files written by `vpdd eval run`, or REV:PATH for the file in a git revision "
                   "or DVC experiment (e.g. no-pretrain:results/eval/metrics.json); with --paired, eval folders "
                   "(or their episodes.json)")
    c.add_argument("--names", nargs="+", help="a row name per file (default: the file's folder); with --paired, "
                   "the arm of each run (required): runs with the same name are that arm's training seeds")
    c.add_argument("--out", help="write the table here (markdown) as well as printing it")
    c.add_argument("--paired", action="store_true", help="arms over training seeds, paired by seed and scene: "
                   "hierarchical-bootstrap intervals, paired t and sign-flip tests against the first arm")
    c.add_argument("--json", help="with --paired: write the raw statistics here (JSON)")
    c.add_argument("--n-boot", type=int, default=4000, help="with --paired: bootstrap replicates (default: 4000)")
    c.add_argument("--seed", type=int, default=0, help="with --paired: bootstrap / Monte Carlo seed (default: 0)")
    c.set_defaults(func=_compare)
    register_video(sp)


def _run(args: argparse.Namespace) -> int:
    from dataclasses import asdict, replace

    from vpdd.cli.common import params
    from vpdd.config.base import validate_tree
    from vpdd.eval.report import evaluate, settings_from_config

    cfg = params(args)
    ev = cfg.eval
    given = {"tasks": args.tasks, "episodes_per_task": args.episodes, "seeds": args.seeds, "max_steps": args.max_steps,
             "n_envs": args.n_envs, "execute_steps": args.execute_steps, "sampling_stride": args.sampling_stride,
             "truncation_r": args.truncation_r, "videos_per_task": args.videos}
    settings = replace(settings_from_config(cfg, args.device), **{k: v for k, v in given.items() if v is not None})
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

    if args.paired:
        return _compare_paired(args)
    if args.json:
        print("vpdd eval compare: error: --json needs --paired", file=sys.stderr)
        return 2
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


def _compare_paired(args: argparse.Namespace) -> int:
    from vpdd.eval.compare import paired_study, paired_table
    from vpdd.eval.paired import read_outcomes
    from vpdd.utils.io import atomic_write_json, atomic_write_text

    def fail(message: str) -> int:
        print(f"vpdd eval compare: error: {message}", file=sys.stderr)
        return 2

    if not args.names:
        return fail("--paired needs --names: the arm of each run (runs with the same name are its seeds)")
    if len(args.names) != len(args.metrics):
        return fail(f"{len(args.names)} names for {len(args.metrics)} runs")
    if args.n_boot < 1:
        return fail(f"--n-boot {args.n_boot}: expected at least 1")
    arms: dict[str, list] = {}
    try:
        for name, path in zip(args.names, args.metrics, strict=True):
            arms.setdefault(name, []).append((path, read_outcomes(path)))
        study = paired_study(list(arms.items()), n_boot=args.n_boot, seed=args.seed)
    except ValueError as err:
        return fail(str(err))
    table = paired_table(study)
    if args.out:
        atomic_write_text(args.out, table + "\n")
    if args.json:
        atomic_write_json(args.json, study)
    print(table)
    return 0
