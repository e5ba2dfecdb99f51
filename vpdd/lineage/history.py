"""Outputs made from a raw-data version, across the workspace, git history and DVC experiments.

:func:`find_outputs_for_data` walks every revision that changed dvc.lock (branches, tags and DVC experiment
refs: ``git log --all``) through one ``git cat-file --batch`` process, and reads each output's
``lineage.json`` from git or, for a DVC-cached output, from the local DVC cache.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from vpdd.lineage.dvcfiles import cache_dir, cached_file, lock_outputs, norm_path, read_dvc_lock, yaml_text
from vpdd.lineage.storage import LINEAGE_FILE


class _GitBatch:
    """One ``git cat-file --batch`` process answering ``REV:path`` lookups (one process for the whole walk)."""

    def __init__(self, repo: Path):
        self.proc = subprocess.Popen(["git", "cat-file", "--batch"], cwd=repo, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def read(self, spec: str) -> bytes | None:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(spec.encode() + b"\n")
        self.proc.stdin.flush()
        header = self.proc.stdout.readline().split()
        if len(header) != 3 or header[1] != b"blob":
            if len(header) == 3:  # a tree or commit: skip its body
                self.proc.stdout.read(int(header[2]) + 1)
            return None
        data = self.proc.stdout.read(int(header[2]))
        self.proc.stdout.read(1)
        return data

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ValueError(f"{repo}: git {' '.join(args)} failed: {proc.stderr.strip()[:300]}")
    return proc.stdout


def _json_or_none(blob: bytes | None) -> dict[str, Any] | None:
    try:
        return json.loads(blob) if blob else None
    except json.JSONDecodeError:
        return None


def _same_version(a: str | None, query: str) -> bool:
    if not a:
        return False
    a, query = a.removesuffix(".dir"), query.removesuffix(".dir")
    return len(query) >= 6 and a.startswith(query)


def _rev_labels(repo: Path) -> dict[str, list[str]]:
    """commit -> names: branches and tags, and ``exp:NAME`` for DVC experiment refs."""
    labels: dict[str, list[str]] = {}
    out = _git(repo, "for-each-ref", "--format=%(objectname) %(*objectname) %(refname)", "refs/heads", "refs/tags",
               "refs/exps")
    for line in out.splitlines():
        parts = line.split()
        sha, ref = (parts[1], parts[2]) if len(parts) == 3 else (parts[0], parts[-1])
        if ref.startswith("refs/exps/"):
            segs = ref.split("/")
            if len(segs) != 5 or segs[2] in ("apply", "celery", "exec", "temp", "runs"):
                continue
            labels.setdefault(sha, []).append(f"exp:{segs[4]}")
        else:
            labels.setdefault(sha, []).append(ref.split("/", 2)[2])
    return labels


def find_outputs_for_data(
    version: str, repo: str | os.PathLike = ".", path: str | None = None, max_revs: int | None = None
) -> list[dict[str, Any]]:
    """Outputs with a lineage record made from raw-data ``version`` (an md5, prefix of 6+ characters), across
    the workspace, every git revision that changed dvc.lock (branches, tags, DVC experiment refs: ``git log
    --all``) and the local DVC cache.

    Each result: ``{"path", "md5", "stage", "data_md5", "experiment", "git_commit", "seen_in": [...]}``;
    ``seen_in`` lists ``workspace`` and ``<short sha> (<refs>)`` entries. Outputs are told apart by their md5,
    so one policy committed on several revisions appears once. ``path`` limits the search to one output.
    """
    root = Path(repo).resolve()
    cache = cache_dir(root)
    labels = _rev_labels(root)
    log_args = ["log", "--all", "--format=%H"]
    if max_revs:
        log_args.append(f"--max-count={max_revs}")
    revs = _git(root, *log_args, "--", "dvc.lock").split()
    found: dict[tuple[str, str], dict[str, Any]] = {}

    def consider(where: str, lock: dict[str, Any], read_git: Any) -> None:
        for out_path, out in lock_outputs(lock).items():
            if path and out_path != norm_path(path):
                continue
            key = (out_path, out.get("md5") or "")
            if key in found:
                found[key]["seen_in"].append(where)
                continue
            lineage_path = out_path if out_path.endswith(LINEAGE_FILE) else f"{out_path}/{LINEAGE_FILE}"
            record = read_git(lineage_path)
            if record is None:
                record = _json_or_none(cached_file(cache, out.get("md5"), LINEAGE_FILE))
            if not record or not _same_version((record.get("data") or {}).get("md5"), version):
                continue
            found[key] = {"path": out_path, "md5": out.get("md5"), "stage": out["stage"],
                          "data_md5": record["data"]["md5"], "experiment": record.get("experiment"),
                          "git_commit": (record.get("git") or {}).get("commit"), "seen_in": [where]}

    def from_workspace(rel: str) -> dict[str, Any] | None:
        p = root / rel
        try:
            return json.loads(p.read_text()) if p.is_file() else None
        except (OSError, json.JSONDecodeError):
            return None

    consider("workspace", read_dvc_lock(root), from_workspace)
    batch = _GitBatch(root)
    try:
        for rev in revs:
            text = batch.read(f"{rev}:dvc.lock")
            if text is None:
                continue
            names = labels.get(rev, [])
            consider(f"{rev[:10]}" + (f" ({', '.join(names)})" if names else ""),
                     yaml_text(text, f"{rev}:dvc.lock"),
                     lambda rel, rev=rev: _json_or_none(batch.read(f"{rev}:{rel}")))
    finally:
        batch.close()
    return list(found.values())
