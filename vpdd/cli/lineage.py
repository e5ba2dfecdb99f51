"""``vpdd lineage``: the chain from raw data to an output, and the outputs made from a data version.

``vpdd lineage DIR`` reads ``DIR/lineage.json`` (else the copy in ``DIR/model.safetensors``'s metadata; or
a ``.safetensors`` file given directly) and prints raw data -> token cache -> tokenizer -> pre-trained model
-> output with their hashes, whether the two copies of the record agree (MISMATCH and the differing keys
when not), then what dvc.lock says about DIR when it is a DVC output and whether that agrees.
``vpdd lineage --data VERSION`` lists every output with a lineage record made from that raw-data version,
across the workspace, git revisions and DVC experiments (see :func:`vpdd.lineage.find_outputs_for_data`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lineage", help="where an output came from; what a data version produced")
    p.add_argument("path", nargs="?", help="an output directory with lineage.json (or a .safetensors file)")
    p.add_argument("--data", metavar="VERSION", help="list outputs made from this raw-data md5 (6+ characters)")
    p.add_argument("--repo", help="the DVC repository (default: the one around PATH, or the current directory)")
    p.add_argument("--output", metavar="OUT", help="with --data: only this output path (e.g. models/policy)")
    p.add_argument("--max-revs", type=int, help="with --data: look at most at this many revisions")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_lineage)


def _lineage(args: argparse.Namespace) -> int:
    if bool(args.path) == bool(args.data):
        raise ValueError("give either an output PATH or --data VERSION")
    return _for_data(args) if args.data else _for_path(args)


def _for_path(args: argparse.Namespace) -> int:
    from vpdd import lineage as lin

    path = Path(args.path)
    record = lin.read_lineage(path)
    repo = Path(args.repo) if args.repo else lin.find_repo_root(path if path.is_dir() else path.parent)
    out_dir = path if path.is_dir() else path.parent
    copies, disagree = _copies(path, out_dir)
    rel = out_dir.resolve().relative_to(repo.resolve()).as_posix() if out_dir.resolve().is_relative_to(
        repo.resolve()) else None
    lock = lin.lock_stage_for(repo, rel) if rel else None
    problems = lin.check_against_lock(record, repo) if lock else []
    if args.json:
        print(json.dumps({"lineage": record, "dvc_lock": lock, "mismatches": problems, "copies": copies,
                          "copies_disagree": disagree}, indent=2))
        return 0
    print("\n".join(lin.lineage_text(record)))
    present = [name for name, here in copies.items() if here]
    same = " (the same)" if len(present) == 2 and not disagree else ""
    print(f"record    in {' and '.join(present) or path.name}{same}")
    if disagree:
        print(f"MISMATCH between {lin.LINEAGE_FILE} and the {lin.WEIGHTS_FILE} metadata:")
        for line in disagree:
            print(f"  {line}")
    if lock:
        print(f"dvc.lock  stage {lock['stage']}: {rel} md5 {lock.get('md5')}")
        for dep, md5 in lock["deps"].items():
            print(f"  dep {dep:<28} {md5}")
        if problems:
            print("MISMATCH between the output's lineage and the current dvc.lock/data.dvc:")
            for line in problems:
                print(f"  {line}")
        else:
            print("consistent with the current dvc.lock and data.dvc")
    elif rel is not None:
        print(f"dvc.lock  {rel} is not a DVC output in {repo}")
    return 0


def _copies(path: Path, out_dir: Path) -> tuple[dict[str, bool], list[str]]:
    """Which of the two copies of the record (lineage.json, the weights' metadata) exist next to ``path``, and
    where they differ. A bare .safetensors file or lineage JSON outside a checkpoint directory has one copy."""
    from vpdd import lineage as lin

    if path.is_file() and path.name not in (lin.LINEAGE_FILE, lin.WEIGHTS_FILE):
        return {path.name: True}, []
    sources = lin.lineage_sources(out_dir)
    copies = {name: record is not None for name, record in sources.items()}
    a, b = sources[lin.LINEAGE_FILE], sources[lin.WEIGHTS_FILE]
    return copies, (lin.compare_records(a, b) if a is not None and b is not None else [])


def _for_data(args: argparse.Namespace) -> int:
    from vpdd import lineage as lin

    repo = Path(args.repo or ".")
    found = lin.find_outputs_for_data(args.data, repo, path=args.output, max_revs=args.max_revs)
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    if not found:
        print(f"no output with a lineage record was made from data version {args.data}")
        return 0
    for item in found:
        exp = f", experiment {item['experiment']}" if item.get("experiment") else ""
        print(f"{item['path']}  md5 {item['md5']}  (stage {item['stage']}{exp}; data {item['data_md5']})")
        for where in item["seen_in"]:
            print(f"  in {where}")
    return 0
