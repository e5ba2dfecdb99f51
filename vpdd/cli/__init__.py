"""The ``vpdd`` console script: one entry point, one module per command group.

Every DVC stage is a ``vpdd ...`` call with explicit input and output paths. Each module in
``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its parser and sets ``func(args) -> int``
as the default; heavy imports (torch, MuJoCo) stay inside the command functions so ``vpdd --help`` is
instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from vpdd.config import ConfigError

COMMAND_MODULES = (
    "info", "config", "data", "tokenizer", "bench", "lineage", "serve", "train", "policy", "eval", "rlbench",
    "study",
)


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vpdd", description="Video-pretrained discrete diffusion policies.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"vpdd.cli.{name}")
        module.register(sub)
    return parser


QUIET_LOGGERS = ("OpenGL", "OpenGL.acceleratesupport", "absl", "matplotlib", "PIL")


def main(argv: list[str] | None = None, group: str | None = None) -> int:
    """Run ``vpdd ARGV``; with ``group``, only that command group (``python -m vpdd.cli.train ...``, e.g. under
    torchrun), where ARGV starts after the group's name."""
    import os

    from vpdd.cli.bench import dispatch

    # Idle OpenMP threads sleep instead of spinning: on a shared CPU the default spin-waiting made 2-thread
    # training steps up to 4x slower (7 vs 30 clips/s next to one busy process); read when torch loads. The
    # Hugging Face libraries are read offline (the text encoders ship in packages) from their first import.
    for name, value in (("OMP_WAIT_POLICY", "PASSIVE"), ("HF_HUB_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(name, value)
    argv = list(sys.argv[1:] if argv is None else argv)
    if group is not None:
        flags = [a for a in argv if a in ("-v", "--verbose")]
        argv = [*flags, group, *(a for a in argv if a not in flags)]
    if (code := dispatch(argv)) is not None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return code
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not args.verbose:
        # Third-party chatter at INFO (PyOpenGL announces a missing OpenGL_accelerate on every render import).
        for noisy in QUIET_LOGGERS:
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, UserError, ValueError, FileNotFoundError) as err:
        # Library errors about bad input carry the file/key/value in their message.
        if args.verbose:
            raise
        print(f"vpdd {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
