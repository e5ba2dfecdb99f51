"""``vpdd config``: compose the Hydra groups into params.yaml, or check a params file."""

from __future__ import annotations

import argparse

from vpdd.config import compose, load_config, write_params


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="compose or validate configs")
    sp = p.add_subparsers(dest="config_cmd", required=True)
    c = sp.add_parser("compose", help="compose conf/ with overrides into params.yaml")
    c.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. preset=paper pretrain.steps=100")
    c.add_argument("--conf", default="conf", help="Hydra config directory")
    c.add_argument("-o", "--out", default="params.yaml")
    c.set_defaults(func=_compose)
    v = sp.add_parser("check", help="validate a params file")
    v.add_argument("path", nargs="?", default="params.yaml")
    v.set_defaults(func=_check)


def _compose(args: argparse.Namespace) -> int:
    data = compose(args.overrides, args.conf)
    write_params(data, args.out)
    print(f"wrote {args.out} (preset={data['preset']})")
    return 0


def _check(args: argparse.Namespace) -> int:
    cfg = load_config(args.path)
    print(f"{args.path}: valid (preset={cfg.preset})")
    return 0
