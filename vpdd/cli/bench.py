"""``vpdd bench``: benchmark commands. Each writes a results file with the machine, versions and date."""

from __future__ import annotations

import argparse
import importlib

# subcommand -> module whose main(argv) runs the benchmark with its own options
BENCHMARKS = {
    "collect": ("vpdd.data.benchmark", "Meta-World collection throughput (frames/s per core)"),
    "diffusion": ("vpdd.diffusion.benchmark", "diffusion loss / reverse step: fast vs reference PyTorch"),
    "tokenizer": ("vpdd.tokenizer.benchmark", "VQ-VAE encoding throughput"),
    "kernels": ("vpdd.diffusion.kernel_benchmark", "Triton kernels vs eager/compiled reference (GPU); fallbacks (CPU)"),
    "train": ("vpdd.train.benchmark", "training step time of pre-training and fine-tuning"),
    "control": ("vpdd.eval.benchmark", "closed-loop success against seconds per control step (stride, chunk, batch)"),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark and write its results file")
    sp = p.add_subparsers(dest="bench_cmd", required=True)
    for name, (module, help_text) in BENCHMARKS.items():
        b = sp.add_parser(name, help=help_text, add_help=False)
        b.add_argument("rest", nargs=argparse.REMAINDER, help="options of the benchmark (see --help)")
        b.set_defaults(func=_run, bench_module=module)


def _run(args: argparse.Namespace) -> int:
    module = importlib.import_module(args.bench_module)
    return int(module.main(args.rest) or 0)


def dispatch(argv: list[str]) -> int | None:
    """Run ``bench NAME ...`` directly, handing every later argument to the benchmark's own parser.

    argparse's REMAINDER does not capture options (``--shapes tiny``) after a sub-subcommand, so the
    console script calls this before parsing. Returns None when ``argv`` is not a benchmark call.
    """
    if len(argv) < 2 or argv[0] != "bench" or argv[1] not in BENCHMARKS:
        return None
    rest = argv[2:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    module = importlib.import_module(BENCHMARKS[argv[1]][0])
    return int(module.main(rest) or 0)
