"""``vpdd tokenizer``: train the video VQ-VAE, build the token cache, and look at reconstructions.

    vpdd tokenizer train --params params.yaml --robot data/metaworld --task-video build/task_video \\
        --corpus build/corpus --out models/tokenizer --live results/tokenizer [--fresh | --restart-if-changed] \\
        [--device auto|cpu|cuda]
    vpdd tokenizer encode --params params.yaml --tokenizer models/tokenizer --robot data/metaworld \\
        --task-video build/task_video --corpus build/corpus --out build/tokens [--batch-size N]
    vpdd tokenizer reconstruct --tokenizer models/tokenizer (--robot DIR | --corpus DIR | --episode F.npz ...)
        --out results/tokenizer/videos [--n 4] [--format mp4|gif]

Multi-GPU / multi-node: ``torchrun --nproc_per_node=G [--nnodes=N ...] -m vpdd.cli.tokenizer train ...``.
This module also runs on its own (``python -m vpdd.cli.tokenizer train ...``).
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    from vpdd.cli.common import add_force_arg, add_params_arg, add_resume_args

    p = sub.add_parser("tokenizer", help="video tokenizer (VQ-VAE): train, encode, reconstruct")
    sp = p.add_subparsers(dest="tokenizer_cmd", required=True)

    t = sp.add_parser("train", help="train (or resume) the tokenizer on robot episodes + the video corpus")
    add_params_arg(t)
    t.add_argument("--robot", help="robot episode folder with index.json (e.g. data/metaworld)")
    t.add_argument("--corpus", help="ingested actionless corpus (e.g. build/corpus)")
    t.add_argument("--task-video", help="actionless video of the tasks (e.g. build/task_video)")
    t.add_argument("--out", required=True, help="checkpoint directory (resumed when it holds a compatible run)")
    t.add_argument("--live", help="DVCLive directory for metrics, plots and the reconstruction grid")
    add_resume_args(t)
    t.add_argument("--data-dvc", default="data.dvc", help="where to read the raw-data version (default: data.dvc)")
    t.set_defaults(func=_train)

    e = sp.add_parser("encode", help="encode all videos into the token cache")
    add_params_arg(e)
    e.add_argument("--tokenizer", required=True, help="trained tokenizer checkpoint directory")
    e.add_argument("--robot", help="robot episode folder with index.json")
    e.add_argument("--corpus", help="ingested actionless corpus")
    e.add_argument("--task-video", help="actionless video of the tasks (joins the robot source)")
    e.add_argument("--out", required=True, help="token cache directory to write")
    e.add_argument("--batch-size", type=int, help="windows per forward pass (default: tokenizer.encode_batch_size)")
    e.add_argument("--device", default="auto")
    e.add_argument("--data-dvc", default="data.dvc")
    add_force_arg(e)
    e.set_defaults(func=_encode)

    r = sp.add_parser("reconstruct", help="write side-by-side original|reconstruction videos")
    r.add_argument("--tokenizer", required=True, help="trained tokenizer checkpoint directory")
    r.add_argument("--robot", help="robot episode folder: reconstruct its first --n episodes")
    r.add_argument("--corpus", help="ingested corpus: reconstruct its first --n videos")
    r.add_argument("--episode", nargs="*", default=[], help="episode .npz files")
    r.add_argument("--n", type=int, default=4, help="videos per folder (default: 4)")
    r.add_argument("--out", required=True, help="folder for the videos and psnr.json")
    r.add_argument("--format", choices=("mp4", "gif"), default="mp4")
    r.add_argument("--fps", type=int, default=20)
    r.add_argument("--device", default="auto")
    r.set_defaults(func=_reconstruct)


def _train(args: argparse.Namespace) -> int:
    from vpdd.cli.common import check_checkpoint_out, params, resume_mode
    from vpdd.cli.training import run_training
    from vpdd.tokenizer.train import train_tokenizer

    cfg = params(args)
    check_checkpoint_out(args, args.robot, args.corpus, args.task_video, args.params)
    result = run_training("tokenizer train", train_tokenizer, cfg=cfg.tokenizer, out=args.out, robot=args.robot,
                          corpus=args.corpus, task_video=args.task_video, live_dir=args.live,
                          resume=resume_mode(args), device=args.device,
                          data_dvc=args.data_dvc)
    if isinstance(result, int):
        return result
    if m := result.metrics:
        print(f"tokenizer: step {result.step}, held-out PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}, "
              f"codes used {100 * m['usage']:.1f}%, {result.seconds:.0f} s -> {result.out}")
    return 0


def _encode(args: argparse.Namespace) -> int:
    from vpdd.cli.common import params
    from vpdd.tokenizer.encode import encode_dataset

    cfg = params(args)
    manifest = encode_dataset(
        args.tokenizer,
        args.out,
        robot=args.robot,
        corpus=args.corpus,
        task_video=args.task_video,
        params=cfg.tokenizer,
        batch_size=args.batch_size,
        device=args.device,
        data_dvc=args.data_dvc,
        force=args.force,
    )
    parts = ", ".join(f"{k}: {v['items']} videos / {v['rows']} grids" for k, v in manifest["sources"].items())
    print(f"token cache {args.out}: {parts}; grid {manifest['grid_shape']}")
    return 0


def _reconstruct(args: argparse.Namespace) -> int:
    from vpdd.tokenizer.reconstruct import reconstruct_videos

    results = reconstruct_videos(
        args.tokenizer,
        args.out,
        robot=args.robot,
        corpus=args.corpus,
        episodes=args.episode,
        n=args.n,
        fmt=args.format,
        fps=args.fps,
        device=args.device,
    )
    for r in results:
        print(f"{r['video']}: PSNR {r['psnr']:.2f} dB over {r['frames']} frames")
    return 0


if __name__ == "__main__":
    from vpdd.cli import main

    sys.exit(main(group="tokenizer"))
