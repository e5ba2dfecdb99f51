"""Arguments and helpers shared by the command modules."""

from __future__ import annotations

import argparse

from vpdd.config import VPDDConfig, load_config


def add_params_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="composed config to read (default: params.yaml)")


def add_force_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true",
                        help="replace --out even when it is a non-empty folder this command did not write")


def add_resume_args(parser: argparse.ArgumentParser) -> None:
    """``--fresh | --restart-if-changed`` and ``--device``: the options of every resumable training command."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint in --out")
    group.add_argument("--restart-if-changed", action="store_true",
                       help="start over (instead of failing) when --out holds a different run (params, data or code)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    add_force_arg(parser)


def resume_mode(args: argparse.Namespace) -> str:
    """The training loops' ``resume`` argument for the options of :func:`add_resume_args`."""
    return "never" if args.fresh else ("auto" if args.restart_if_changed else "strict")


def check_checkpoint_out(args: argparse.Namespace, *inputs) -> None:
    """The output-folder rule for a training command's checkpoint directory (marker: ``meta.json``)."""
    from vpdd.utils.io import check_output_dir

    check_output_dir(args.out, inputs=inputs, marker="meta.json", force=getattr(args, "force", False))


def params(args: argparse.Namespace) -> VPDDConfig:
    return load_config(args.params)

