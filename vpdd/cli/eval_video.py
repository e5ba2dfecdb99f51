"""``vpdd eval video``: video-prediction quality of a checkpoint on held-out robot clips.

    vpdd eval video --policy models/policy --params params.yaml --out results/eval/video \\
        [--robot data/metaworld] [--episodes 2 --windows 4 --seed 0 --sampling-stride 10 --examples 2]

Writes ``metrics.json`` (PSNR/SSIM per task and mean for the predicted clip, the tokenizer's reconstruction and
the copy-last-frame baseline; token accuracy; for a policy, the foresight probe), ``side_by_side.png`` and
``side_by_side.gif`` into ``--out``
(:mod:`vpdd.eval.video_quality`, docs/evaluation.md). ``register_video(sub)`` adds the ``video`` subcommand to
the ``vpdd eval`` subparsers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from vpdd.cli.common import add_params_arg, params


def register_video(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("video", help="video-prediction quality (PSNR/SSIM, side-by-side image and GIF) on "
                                     "held-out robot clips")
    p.add_argument("--policy", required=True, help="a vpdd-pretrain or vpdd-policy checkpoint directory")
    add_params_arg(p)
    p.add_argument("--out", required=True, help="output folder (metrics.json, side_by_side.png/.gif)")
    p.add_argument("--robot", help="the training demonstrations (index.json): their seeds are excluded and their "
                                   "recorded camera settings checked (e.g. data/metaworld)")
    p.add_argument("--heldout", help="evaluate the episodes in this folder (index.json) instead of collecting "
                                     "held-out Meta-World episodes; they must not be training episodes")
    p.add_argument("--tasks", nargs="+", help="tasks (default: eval.tasks, else data.robot.tasks)")
    p.add_argument("--episodes", type=int, default=2, help="held-out episodes per task (default 2)")
    p.add_argument("--windows", type=int, default=4, help="windows per episode (default 4)")
    p.add_argument("--seed", type=int, default=0, help="held-out scenes and sampling seed (default 0)")
    p.add_argument("--sampling-stride", type=int, default=10,
                   help="reverse-diffusion stride (default 10; 0: the checkpoint's diffusion.sampling_stride)")
    p.add_argument("--probe-windows", type=int, default=12,
                   help="held-out states per episode for the foresight probe of a policy (default 12; 0: none)")
    p.add_argument("--examples", type=int, default=2, help="examples per task in the PNG/GIF (default 2)")
    p.add_argument("--batch-size", type=int, default=16, help="windows per reverse diffusion (default 16)")
    p.add_argument("--keep-failures", action="store_true", help="keep scripted episodes that did not succeed")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run_video)
    return p


def run_video(args: argparse.Namespace) -> int:
    from vpdd.eval.video_quality import VideoEvalSettings, run_video_eval

    cfg = params(args)
    settings = VideoEvalSettings(
        episodes_per_task=args.episodes, windows_per_episode=args.windows,
        sampling_stride=args.sampling_stride or None, seed=args.seed, examples_per_task=args.examples,
        batch_size=args.batch_size, keep_failures=args.keep_failures, probe_windows_per_episode=args.probe_windows,
    )
    start = time.perf_counter()
    metrics = run_video_eval(args.policy, cfg, args.out, settings, tasks=args.tasks, robot=args.robot,
                             heldout=args.heldout, device=args.device, progress=sys.stderr.isatty())
    summary = {"mean": metrics["mean"], "windows": metrics["counts"]["windows"],
               "seconds": round(time.perf_counter() - start, 1), "out": str(args.out)}
    print(json.dumps(summary))
    if "foresight_probe" in metrics:
        from vpdd.eval.foresight import probe_table

        print("\n".join(probe_table(metrics["foresight_probe"], metrics["tokens"])))
    return 0
