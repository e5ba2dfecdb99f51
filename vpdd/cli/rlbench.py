"""``vpdd rlbench``: the RLBench path on PerAct-format data (docs/rlbench.md).

    vpdd rlbench generate --params params.yaml --out build/rlbench/data            # synthetic PerAct data
    vpdd rlbench inspect build/rlbench/data --params params.yaml --out results/rlbench/data.json
    vpdd rlbench export build/rlbench/data --params params.yaml --out build/rlbench/views   # for tokenizer train
    vpdd rlbench tokenize --params params.yaml --tokenizer models/tokenizer --data build/rlbench/data \\
        --out build/rlbench/tokens
    vpdd rlbench pretrain --params params.yaml --tokens build/rlbench/tokens --tokenizer models/tokenizer \\
        --out models/rlbench/pretrain --live results/rlbench/pretrain [--fresh | --restart-if-changed]
    vpdd rlbench finetune --params params.yaml --tokens build/rlbench/tokens --tokenizer models/tokenizer \\
        --data build/rlbench/data --pretrained models/rlbench/pretrain --out models/rlbench/policy \\
        --live results/rlbench/finetune
    vpdd rlbench predict --policy models/rlbench/policy --episode build/rlbench/data/<task>/all_variations/\\
        episodes/episode0 [--step S] [--out results/rlbench/predict.json]
    vpdd rlbench evaluate --policy models/rlbench/policy --params params.yaml --out results/rlbench/eval.json

``evaluate`` needs RLBench + CoppeliaSim and fails at once with the install steps when they are missing.
Exit codes: 0 done, 2 bad input / RLBench unavailable, 3 diverged, 130 interrupted (checkpoint saved).
"""

from __future__ import annotations

import argparse
import json
import sys

from vpdd.cli.common import add_force_arg, add_params_arg, add_resume_args, check_checkpoint_out, params, resume_mode


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rlbench", help="RLBench: PerAct data, multi-view tokens, keyframe policy")
    sp = p.add_subparsers(dest="rlbench_cmd", required=True)

    g = sp.add_parser("generate", help="write a small synthetic dataset in PerAct's format (deterministic)")
    add_params_arg(g)
    g.add_argument("--out", required=True, help="output folder (replaced atomically)")
    add_force_arg(g)
    g.set_defaults(func=_generate)

    i = sp.add_parser("inspect", help="validate PerAct episodes and summarise them as JSON")
    i.add_argument("root", help="PerAct data folder (<task>/all_variations/episodes/episode<N>/)")
    add_params_arg(i)
    i.add_argument("--out", help="write the summary here (default: stdout)")
    i.add_argument("--no-images", action="store_true", help="check only the pickles")
    i.set_defaults(func=_inspect)

    e = sp.add_parser("export", help="every camera of every episode as vpdd episodes (vpdd tokenizer train --robot)")
    e.add_argument("root", help="PerAct data folder")
    add_params_arg(e)
    e.add_argument("--out", required=True, help="output folder (replaced atomically)")
    add_force_arg(e)
    e.set_defaults(func=_export)

    t = sp.add_parser("tokenize", help="encode every camera of every episode with a tokenizer (multi-view cache)")
    add_params_arg(t)
    t.add_argument("--tokenizer", required=True, help="tokenizer checkpoint directory")
    t.add_argument("--data", required=True, help="PerAct data folder")
    t.add_argument("--out", required=True, help="token cache directory to write")
    t.add_argument("--batch-size", type=int, help="windows per forward pass (default: tokenizer.encode_batch_size)")
    t.add_argument("--device", default="auto")
    add_force_arg(t)
    t.set_defaults(func=_tokenize)

    for name, text in (("pretrain", "multi-view video prediction (all cameras in one sequence, no actions)"),
                       ("finetune", "freeze the video network, train the keyframe action network")):
        s = sp.add_parser(name, help=text)
        add_params_arg(s)
        s.add_argument("--tokens", required=True, help="multi-view token cache (vpdd rlbench tokenize)")
        s.add_argument("--tokenizer", required=True, help="the tokenizer that made the token cache")
        s.add_argument("--out", required=True, help="checkpoint directory (resumed when it holds the same run)")
        s.add_argument("--live", help="DVCLive directory for metrics, plots and the sample grid")
        if name == "finetune":
            s.add_argument("--data", required=True, help="PerAct data folder (keyframes from low_dim_obs.pkl)")
            s.add_argument("--pretrained", help="pre-trained model (rlbench.finetune.init_from_pretrained)")
        add_resume_args(s)
        s.set_defaults(func=_train, stage=name)

    r = sp.add_parser("predict", help="predict keyframe actions on a recorded episode and compare them")
    r.add_argument("--policy", required=True, help="RLBench policy checkpoint (vpdd rlbench finetune)")
    which = r.add_mutually_exclusive_group(required=True)
    which.add_argument("--episode", nargs="+", help="episode folder(s) <task>/all_variations/episodes/episode<N>")
    which.add_argument("--data", help="PerAct data folder: predict on --per-task episodes of each policy task, "
                       "preferring episodes the policy was not fine-tuned on")
    r.add_argument("--per-task", type=int, default=1, help="episodes per task with --data (default 1)")
    r.add_argument("--step", type=int, action="append",
                   help="step(s) to predict at (default: step 0 and every keyframe but the last)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--stride", type=int, help="reverse-diffusion stride (default: the checkpoint's)")
    r.add_argument("--out", help="write the predictions and errors as JSON")
    r.add_argument("--device", default="cpu")
    r.set_defaults(func=_predict)

    v = sp.add_parser("evaluate", help="closed-loop success in RLBench (needs RLBench + CoppeliaSim)")
    v.add_argument("--policy", required=True)
    add_params_arg(v)
    v.add_argument("--out", required=True, help="metrics JSON")
    v.add_argument("--tasks", nargs="+", help="default: rlbench.tasks")
    v.add_argument("--episodes", type=int, help="per task (default: rlbench.eval_episodes)")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--device", default="auto")
    v.set_defaults(func=_evaluate)


def _write_json(path: str | None, obj) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str)
    if path:
        from vpdd.utils.io import atomic_write_text

        atomic_write_text(path, text + "\n")
        print(f"wrote {path}")
    else:
        print(text)


def _generate(args: argparse.Namespace) -> int:
    from vpdd.rlbench.commands import generated_cameras
    from vpdd.rlbench.synthetic import generate_dataset

    cfg = params(args)
    summary = generate_dataset(args.out, cfg.rlbench.generate, cfg.rlbench.image_size, cameras=generated_cameras(cfg),
                               progress=sys.stderr.isatty(), force=args.force)
    n = sum(t["episodes"] for t in summary["tasks"].values())
    print(f"{args.out}: {n} episodes of {sorted(summary['tasks'])}, cameras {summary['cameras']}, "
          f"{summary['image_size']}x{summary['image_size']}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from vpdd.rlbench.reader import summarize

    cfg = params(args)
    r = cfg.rlbench
    report = summarize(args.root, cameras=r.cameras, images=not args.no_images, stopping_delta=r.stopping_delta,
                       stop_buffer=r.stop_buffer)
    if not args.out:
        _write_json(None, report)
        return 0
    from vpdd.utils.io import atomic_write_json
    from vpdd.utils.records import sidecar_path

    # DVC reads the counts as metrics; the full report (root, per-episode lists, instructions) goes beside it.
    atomic_write_json(sidecar_path(args.out), report)
    atomic_write_json(args.out, {"episodes": report["episodes"], "tasks": {
        t: {k: v[k] for k in ("episodes", "mean_length", "mean_keyframes")} for t, v in report["tasks"].items()}})
    print(f"wrote {args.out} (and {sidecar_path(args.out)})")
    return 0


def _export(args: argparse.Namespace) -> int:
    from vpdd.rlbench.tokens import export_views

    cfg = params(args)
    out = export_views(args.root, args.out, resolution=cfg.tokenizer.resolution, cameras=cfg.rlbench.cameras,
                       force=args.force)
    print(f"{args.out}: {out['videos']} videos ({out['episodes']} episodes x {len(out['cameras'])} cameras) at "
          f"{out['resolution']}x{out['resolution']}")
    return 0


def _tokenize(args: argparse.Namespace) -> int:
    from vpdd.rlbench.tokens import encode_rlbench
    from vpdd.tokenizer.encode import check_against_params
    from vpdd.tokenizer.pretrained import peek_config

    cfg = params(args)
    check_against_params(args.tokenizer, peek_config(args.tokenizer), cfg.tokenizer)
    manifest = encode_rlbench(args.tokenizer, args.data, args.out, cameras=cfg.rlbench.cameras,
                              batch_size=args.batch_size, device=args.device, force=args.force)
    src = manifest["sources"]["robot"]
    print(f"token cache {args.out}: {src['items']} videos ({len(cfg.rlbench.cameras)} cameras) / {src['rows']} grids; "
          f"grid {manifest['grid_shape']}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from vpdd.cli.training import run_training, training_summary
    from vpdd.rlbench.training import train_rlbench_stage

    cfg = params(args)
    check_checkpoint_out(args, args.tokens, args.tokenizer, getattr(args, "data", None),
                         getattr(args, "pretrained", None), args.params)
    result = run_training(
        f"rlbench {args.stage}", train_rlbench_stage, stage=args.stage, cfg=cfg, tokens=args.tokens,
        tokenizer=args.tokenizer, out=args.out, data_root=getattr(args, "data", None), live_dir=args.live,
        pretrained=getattr(args, "pretrained", None), resume=resume_mode(args), device=args.device,
        params_file=args.params,
    )
    if isinstance(result, int):
        return result
    print(training_summary(f"rlbench {args.stage}", result,
                           ("train/loss", "eval/video_token_acc", "eval/action_bin_acc")))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from vpdd.rlbench.commands import held_out_first, predict_report
    from vpdd.rlbench.policy import RLBenchPolicy

    policy = RLBenchPolicy.from_pretrained(args.policy, device=args.device, sampling_stride=args.stride)
    paths = args.episode or held_out_first(policy, args.data, args.per_task)
    report = predict_report(policy, paths, args.step, args.seed)
    for ep in report["episodes"]:
        print(f"{ep['episode']}: {len(ep['queries'])} queries, first keyframe error "
              f"{ep['mean_translation_error_m']:.3f} m / {ep['mean_rotation_error_deg']:.1f} deg, "
              f"gripper {ep['gripper_accuracy']:.2f}")
    record = {"policy": args.policy, "seed": args.seed, "stride": args.stride, **report}
    if args.out:
        from vpdd.utils.records import sidecar_path, write_metrics

        # the summary errors are the metrics; the per-episode queries and the settings go to the sidecar
        write_metrics(args.out, record, ("policy", "seed", "stride", "episodes"))
        print(f"wrote {args.out} (and {sidecar_path(args.out)})")
    else:
        _write_json(None, record)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from vpdd.rlbench.commands import evaluate_policy
    from vpdd.rlbench.env import RLBenchUnavailable

    cfg = params(args)
    try:
        result = evaluate_policy(args.policy, cfg, tasks=args.tasks, episodes=args.episodes, seed=args.seed,
                                 device=args.device)
    except RLBenchUnavailable as err:
        print(f"vpdd rlbench evaluate: error: {err}", file=sys.stderr)
        return 2
    _write_json(args.out, result)
    print(f"RLBench success rate {result['success_rate']:.3f}")
    return 0
