"""A paired study over fine-tuning seeds: each arm (a set of config overrides) fine-tuned with every seed from
the same pre-trained model and evaluated on the same closed-loop scenes, then compared seed by seed.

    python benchmarks/finetune_seeds.py run --out build/study/foresight --seeds 0 1 2 \\
        --arm noised_truth finetune.foresight=noised_truth --arm masked finetune.foresight=masked
    python benchmarks/finetune_seeds.py summary --out build/study/foresight --baseline noised_truth bc \\
        --table results/foresight/seeds.md --json results/foresight/seeds.json

``run`` fine-tunes (``vpdd train finetune``, resumable) and evaluates (``vpdd eval run``) every (arm, seed) in
``OUT/<arm>/seed<k>/`` and skips the pairs whose ``eval/metrics.json`` exists, so an interrupted study picks up
where it stopped; ``--jobs 2`` runs two pairs at once, one thread each; ``--train-only`` fine-tunes and stops
(to screen arms offline with ``benchmarks/action_decoding.py`` first; a later run evaluates the same policies).
``--reuse ARM:SEED=DIR`` takes a pair
from an evaluation already made with those settings (e.g. the pipeline's ``results/eval`` for the default
arm). Arms whose overrides are all ``eval.*`` settings (e.g. the action decoding) act with one policy per
seed, fine-tuned once into ``OUT/_shared/seed<k>/``: fine-tuning does not read them, so such arms differ in
evaluation alone. ``summary`` writes the table of :func:`vpdd.eval.seeds.seed_study`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml


def _set(tree: dict, dotted: str, value: str) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        if k not in node:
            raise SystemExit(f"override {dotted}: no key {k!r} in params.yaml")
        node = node[k]
    if keys[-1] not in node:
        raise SystemExit(f"override {dotted}: no key {keys[-1]!r} in params.yaml")
    node[keys[-1]] = yaml.safe_load(value)


_POLICY_LOCKS: defaultdict[Path, threading.Lock] = defaultdict(threading.Lock)


def _params(args: argparse.Namespace, overrides: list[str], seed: int) -> dict:
    params = yaml.safe_load(Path(args.params).read_text())
    for o in overrides:
        _set(params, *o.split("=", 1))
    _set(params, "finetune.seed", str(seed))
    return params


def _run_logged(cmd: list[str], log, env: dict[str, str]) -> bool:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode == 0


def _pair(args: argparse.Namespace, arm: str, overrides: list[str], seed: int) -> str:
    d = Path(args.out) / arm / f"seed{seed}"
    if (d / "eval" / "metrics.json").is_file():
        return f"{arm} seed {seed}: done before"
    d.mkdir(parents=True, exist_ok=True)
    (d / "params.yaml").write_text(yaml.safe_dump(_params(args, overrides, seed), sort_keys=False))
    # eval-only arms share the seed's policy (trained with none of the overrides: they are all eval.*)
    shared = all(o.startswith("eval.") for o in overrides)
    p = Path(args.out) / "_shared" / f"seed{seed}" if shared else d
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    with _POLICY_LOCKS[p], open(d / "log.txt", "a") as log:
        if not (p / "finetuned").is_file():
            p.mkdir(parents=True, exist_ok=True)
            if shared:
                (p / "params.yaml").write_text(yaml.safe_dump(_params(args, [], seed), sort_keys=False))
            cmd = ["vpdd", "train", "finetune", "--params", str(p / "params.yaml"), "--tokens", args.tokens,
                   "--tokenizer", args.tokenizer, "--robot", args.robot, "--pretrained", args.pretrained, "--out",
                   str(p / "policy"), "--live", str(p / "finetune"), "--device", "cpu"]
            if not _run_logged(cmd, log, env):
                return f"{arm} seed {seed}: FAILED (train finetune; see {d / 'log.txt'})"
            (p / "finetuned").write_text("")
    if args.train_only:
        return f"{arm} seed {seed}: fine-tuned ({p / 'policy'})"
    with open(d / "log.txt", "a") as log:
        cmd = ["vpdd", "eval", "run", "--policy", str(p / "policy"), "--params", str(d / "params.yaml"), "--out",
               str(d / "eval")]
        if not _run_logged(cmd, log, env):
            return f"{arm} seed {seed}: FAILED (eval run; see {d / 'log.txt'})"
    return f"{arm} seed {seed}: done"


def _run(args: argparse.Namespace) -> int:
    arms = {name: overrides for name, *overrides in args.arm}
    for spec in args.reuse:
        pair, src = spec.split("=", 1)
        arm, seed = pair.split(":")
        dst = Path(args.out) / arm / f"seed{seed}" / "eval"
        if not dst.joinpath("metrics.json").is_file():
            dst.mkdir(parents=True, exist_ok=True)
            for name in ("metrics.json", "episodes.json", "run.json"):
                shutil.copy2(Path(src) / name, dst / name)
            (dst.parent / "reused_from.txt").write_text(f"{src}\n")
    jobs = [(arm, ov, s) for s in args.seeds for arm, ov in arms.items()]
    with ThreadPoolExecutor(args.jobs) as pool:
        for line in pool.map(lambda j: _pair(args, *j), jobs):
            print(line, flush=True)
    return 0


def _summary(args: argparse.Namespace) -> int:
    import json

    from vpdd.eval.seeds import read_study, seed_study, seed_study_table
    from vpdd.utils.io import atomic_write_text

    runs = read_study(args.out)
    studies = {base: seed_study(runs, baseline=base) for base in args.baseline}
    table = "\n\n".join(f"Against {base}:\n\n{seed_study_table(s)}" for base, s in studies.items())
    print(table)
    if args.table:
        atomic_write_text(args.table, table + "\n")
    if args.json:
        atomic_write_text(args.json, json.dumps(studies, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp = p.add_subparsers(dest="cmd", required=True)
    r = sp.add_parser("run")
    r.add_argument("--out", required=True)
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--arm", nargs="+", action="append", required=True, metavar="NAME [KEY=VALUE ...]")
    r.add_argument("--reuse", action="append", default=[], metavar="ARM:SEED=EVAL_DIR")
    r.add_argument("--params", default="params.yaml")
    r.add_argument("--tokens", default="build/tokens")
    r.add_argument("--tokenizer", default="models/tokenizer")
    r.add_argument("--robot", default="data/metaworld")
    r.add_argument("--pretrained", default="models/pretrain")
    r.add_argument("--jobs", type=int, default=1)
    r.add_argument("--threads", type=int, default=1, help="OMP threads per job (default 1)")
    r.add_argument("--train-only", action="store_true",
                   help="fine-tune the pairs and stop (a later run without it evaluates them)")
    r.set_defaults(func=_run)
    s = sp.add_parser("summary")
    s.add_argument("--out", required=True)
    s.add_argument("--baseline", required=True, nargs="+", help="arm(s) the others are compared with (a table each)")
    s.add_argument("--table")
    s.add_argument("--json")
    s.set_defaults(func=_summary)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
