"""``vpdd train``: the two diffusion stages (docs/training.md) and the behaviour-cloning baseline (``bc``,
docs/evaluation.md).

    vpdd train pretrain --params params.yaml --tokens build/tokens --tokenizer models/tokenizer \\
        --out models/pretrain --live results/pretrain [--fresh | --restart-if-changed] [--device auto|cpu|cuda]
    vpdd train finetune --params params.yaml --tokens build/tokens --tokenizer models/tokenizer \\
        --robot data/metaworld --pretrained models/pretrain --out models/policy --live results/finetune
    vpdd train bc --params params.yaml --robot data/metaworld --out models/bc --live results/bc

A run started again with the same ``--out`` resumes from its checkpoint when that checkpoint belongs to the
same run (same fingerprint), and refuses a different one unless ``--fresh`` (start over) or
``--restart-if-changed`` (start over only when it differs; what the DVC stages use, whose outputs persist).
Exit codes: 0 done, 2 bad input, 3 diverged (the last good checkpoint is kept), 130 interrupted (saved).
Multi-GPU: ``torchrun --nproc_per_node=G -m vpdd.cli.train pretrain ...``.
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    from vpdd.cli.common import add_params_arg, add_resume_args

    p = sub.add_parser("train", help="pre-train / fine-tune (discrete diffusion); the BC baseline")
    sp = p.add_subparsers(dest="train_cmd", required=True)
    for name, help_text in (("pretrain", "video prediction on actionless corpus + robot video (no actions)"),
                            ("finetune", "freeze the video network, train the action network on demonstrations")):
        t = sp.add_parser(name, help=help_text)
        add_params_arg(t)
        t.add_argument("--tokens", required=True, help="token cache directory (vpdd tokenizer encode)")
        t.add_argument("--tokenizer", required=True, help="tokenizer checkpoint that made the token cache")
        t.add_argument("--out", required=True, help="checkpoint directory (resumed when it holds the same run)")
        t.add_argument("--live", help="DVCLive directory for metrics, plots and the sample grid")
        if name == "finetune":
            t.add_argument("--robot", required=True, help="robot episodes (their actions), e.g. data/metaworld")
            t.add_argument("--pretrained", help="pre-trained model directory (finetune.init_from_pretrained)")
        add_resume_args(t)
        t.set_defaults(func=_train, stage=name)
    b = sp.add_parser("bc", help="the behaviour-cloning baseline (CNN on the fine-tuning demonstrations)")
    add_params_arg(b)
    b.add_argument("--robot", required=True, help="robot episodes (frames and actions), e.g. data/metaworld")
    b.add_argument("--out", required=True, help="checkpoint directory (resumed when it holds the same run)")
    b.add_argument("--live", help="DVCLive directory for metrics and plots")
    add_resume_args(b)
    b.set_defaults(func=_train_bc)


def _train(args: argparse.Namespace) -> int:
    from vpdd.cli.common import check_checkpoint_out, params, resume_mode
    from vpdd.cli.training import run_training, training_summary
    from vpdd.train.loop import train_stage

    cfg = params(args)
    check_checkpoint_out(args, args.tokens, args.tokenizer, getattr(args, "robot", None),
                         getattr(args, "pretrained", None), args.params)
    result = run_training(
        f"train {args.stage}", train_stage, stage=args.stage, cfg=cfg, tokens=args.tokens, tokenizer=args.tokenizer,
        out=args.out, live_dir=args.live, robot=getattr(args, "robot", None),
        pretrained=getattr(args, "pretrained", None), resume=resume_mode(args), device=args.device,
        params_file=args.params,
    )
    if isinstance(result, int):
        return result
    print(training_summary(args.stage, result,
                           ("train/loss", "eval/video_token_acc", "eval/action_bin_acc", "eval/action_l1")))
    return 0


def _train_bc(args: argparse.Namespace) -> int:
    from vpdd.bc.train import train_bc
    from vpdd.cli.common import check_checkpoint_out, params, resume_mode
    from vpdd.cli.training import run_training, training_summary

    cfg = params(args)
    check_checkpoint_out(args, args.robot, args.params)
    result = run_training("train bc", train_bc, cfg=cfg, robot=args.robot, out=args.out, live_dir=args.live,
                          resume=resume_mode(args), device=args.device, params_file=args.params)
    if isinstance(result, int):
        return result
    print(training_summary("bc", result, ("train/loss", "eval/action_bin_acc", "eval/action_l1")))
    return 0


if __name__ == "__main__":
    from vpdd.cli import main

    sys.exit(main(group="train"))
