"""``vpdd tokenizer``: train the video VQ-VAE, build the token cache, and look at reconstructions.

    vpdd tokenizer train --params params.yaml --robot data/metaworld --corpus build/corpus \\
        --out models/tokenizer --live results/tokenizer [--fresh | --restart-if-changed] [--device auto|cpu|cuda]
    vpdd tokenizer encode --params params.yaml --tokenizer models/tokenizer --robot data/metaworld \\
        --corpus build/corpus --out build/tokens [--batch-size N]
    vpdd tokenizer reconstruct --tokenizer models/tokenizer (--robot DIR | --corpus DIR | --episode F.npz ...)
        --out results/tokenizer/videos [--n 4] [--format mp4|gif]

Multi-GPU / multi-node: ``torchrun --nproc_per_node=G [--nnodes=N ...] -m vpdd.cli.tokenizer train ...``.
This module also runs on its own (``python -m vpdd.cli.tokenizer train ...``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def register(sub: argparse._SubParsersAction) -> None:
    from vpdd.cli.common import add_force_arg, add_params_arg, add_resume_args

    p = sub.add_parser("tokenizer", help="video tokenizer (VQ-VAE): train, encode, reconstruct")
    sp = p.add_subparsers(dest="tokenizer_cmd", required=True)

    t = sp.add_parser("train", help="train (or resume) the tokenizer on robot episodes + the video corpus")
    add_params_arg(t)
    t.add_argument("--robot", help="robot episode folder with index.json (e.g. data/metaworld)")
    t.add_argument("--corpus", help="ingested actionless corpus (e.g. build/corpus)")
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


def _passive_omp() -> None:
    """Let idle OpenMP threads sleep instead of spinning (unless the user chose otherwise).

    On a CPU shared with other processes, the default spin-waiting made 2-thread training steps up to 4x
    slower (measured: 7 vs 30 clips/s next to one busy process); sleeping threads cost little when the
    machine is idle. Only effective before torch is first imported, which is the case for the CLI.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _train(args: argparse.Namespace) -> int:
    _passive_omp()
    from vpdd.cli.common import check_checkpoint_out, params, resume_mode
    from vpdd.runtime.guard import TrainingDiverged, TrainingInterrupted
    from vpdd.tokenizer.train import train_tokenizer

    cfg = params(args)
    check_checkpoint_out(args, args.robot, args.corpus, args.params)
    try:
        result = train_tokenizer(
            cfg.tokenizer,
            args.out,
            robot=args.robot,
            corpus=args.corpus,
            live_dir=args.live,
            resume=resume_mode(args),
            device=args.device,
            data_dvc=args.data_dvc,
        )
    except TrainingDiverged as err:
        print(f"vpdd tokenizer train: error: {err}", file=sys.stderr)
        return 3
    except TrainingInterrupted as err:
        print(f"vpdd tokenizer train: {err}", file=sys.stderr)
        return 130
    m = result.metrics
    if m:
        print(
            f"tokenizer: step {result.step}, held-out PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}, "
            f"codes used {100 * m['usage']:.1f}%, {result.seconds:.0f} s -> {result.out}"
        )
    return 0


def _encode(args: argparse.Namespace) -> int:
    _passive_omp()
    from vpdd.cli.common import params
    from vpdd.tokenizer.encode import encode_dataset

    cfg = params(args)
    manifest = encode_dataset(
        args.tokenizer,
        args.out,
        robot=args.robot,
        corpus=args.corpus,
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


def main(argv: list[str] | None = None) -> int:
    """Run only this command group (``python -m vpdd.cli.tokenizer ...``)."""
    from vpdd.config import ConfigError

    parser = argparse.ArgumentParser(prog="vpdd")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = [a for a in argv if a in ("-v", "--verbose")]
    args = parser.parse_args([*flags, "tokenizer", *(a for a in argv if a not in flags)])
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        if args.verbose:
            raise
        print(f"vpdd tokenizer: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
