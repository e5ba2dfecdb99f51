"""Arguments and helpers shared by the command modules."""

from __future__ import annotations

import argparse

from vpdd.config import VPDDConfig, load_config


def add_params_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="composed config to read (default: params.yaml)")


def params(args: argparse.Namespace) -> VPDDConfig:
    return load_config(args.params)
