"""``vpdd train``: the two diffusion stages (docs/training.md).

    vpdd train pretrain --params params.yaml --tokens build/tokens --tokenizer models/tokenizer \\
        --out models/pretrain --live results/pretrain [--fresh | --restart-if-changed] [--device auto|cpu|cuda]
    vpdd train finetune --params params.yaml --tokens build/tokens --tokenizer models/tokenizer \\
        --robot data/metaworld --pretrained models/pretrain --out models/policy --live results/finetune

A run started again with the same ``--out`` resumes from its checkpoint when that checkpoint belongs to the
same run (same fingerprint), and refuses a different one unless ``--fresh`` (start over) or
``--restart-if-changed`` (start over only when it differs; what the DVC stages use, whose outputs persist).
Exit codes: 0 done, 2 bad input, 3 diverged (the last good checkpoint is kept), 130 interrupted (saved).
Multi-GPU: ``torchrun --nproc_per_node=G -m vpdd.cli.train pretrain ...``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def register(sub: argparse._SubParsersAction) -> None:
    from vpdd.cli.common import add_params_arg, add_resume_args

    p = sub.add_parser("train", help="pre-train the video model / fine-tune the policy (discrete diffusion)")
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


def _train(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep (shared CPUs)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from vpdd.cli.common import check_checkpoint_out, params, resume_mode
    from vpdd.runtime.guard import TrainingDiverged, TrainingInterrupted
    from vpdd.train.loop import train_stage

    cfg = params(args)
    check_checkpoint_out(args, args.tokens, args.tokenizer, getattr(args, "robot", None),
                         getattr(args, "pretrained", None), args.params)
    resume = resume_mode(args)
    try:
        result = train_stage(
            args.stage,
            cfg,
            tokens=args.tokens,
            tokenizer=args.tokenizer,
            out=args.out,
            live_dir=args.live,
            robot=getattr(args, "robot", None),
            pretrained=getattr(args, "pretrained", None),
            resume=resume,
            device=args.device,
            params_file=args.params,
        )
    except TrainingDiverged as err:
        print(f"vpdd train {args.stage}: error: {err}", file=sys.stderr)
        return 3
    except TrainingInterrupted as err:
        print(f"vpdd train {args.stage}: {err}", file=sys.stderr)
        return 130
    m = result.metrics
    shown = ", ".join(f"{k} {v:.4g}" for k, v in m.items() if k in (
        "train/loss", "eval/video_token_acc", "eval/action_bin_acc", "eval/action_l1"))
    print(f"{args.stage}: step {result.step}, {result.seconds:.0f} s{', ' + shown if shown else ''} -> {result.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run only this command group (``python -m vpdd.cli.train pretrain ...``, e.g. under torchrun)."""
    from vpdd.config import ConfigError

    parser = argparse.ArgumentParser(prog="vpdd")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = [a for a in argv if a in ("-v", "--verbose")]
    args = parser.parse_args([*flags, "train", *(a for a in argv if a not in flags)])
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        if args.verbose:
            raise
        print(f"vpdd train: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
