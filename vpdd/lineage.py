"""Lineage: which raw data, code, params and upstream artefacts produced an output directory.

This module is the only place in the library that reads DVC's files. It reads them as plain YAML/JSON and
runs ``git``; it never imports ``dvc`` or ``prefect``:

- ``data.dvc``: the raw-data version (the md5 of ``data/``, a ``.dir`` hash);
- ``dvc.lock``: the md5 of every stage output; DVC writes a stage's entry as soon as that stage completes,
  so a stage that runs inside ``dvc repro`` sees the hashes of the upstream stages of the same run;
- ``dvc.yaml``: the stage list (its params, metrics and plots) for the Prefect flows and the params hash;
- the local DVC cache (``.dvc/cache/files/md5/...``) to read a ``lineage.json`` that lives inside a cached
  output at an older git revision (``find_outputs_for_data``).

A lineage record (``build_lineage``) is a small JSON-able dict::

    schema               1
    output               the output directory, relative to the repository root
    stage                the DVC stage that wrote it (DVC sets DVC_STAGE for every stage command)
    experiment           the DVC experiment name (DVC_EXP_NAME, set by `dvc exp run`), or null
    git                  {"commit", "dirty"} of the checkout the stage ran in
    data                 {"dvc_file", "path", "md5", "size", "nfiles"} from data.dvc (the raw-data version)
    robot_data           imported robot data (data.robot.source=lerobot): {"store", "format", "path", "repo_id",
                         "revision", "content_sha256", ...} from the store's source.json, else null
    artifacts            {"token_cache", "tokenizer", "pretrain"} -> {"path", "md5", "stage"} or null,
                         read from dvc.lock (build/tokens, models/tokenizer, models/pretrain); null
                         unless its stage is upstream of this one in dvc.yaml (a stage never lists its
                         own previous output)
    params               {"file", "keys", "sha256"}: sha256 of the canonical JSON of the params used
    kernel_impl          what vpdd_kernels.dispatch.resolve_impl picks ("triton" or "torch")
    versions             package versions (vpdd, torch, triton, numpy, dvc, prefect, ...)
    prefect_flow_run_id  VPDD_FLOW_RUN_ID (set by the flows in flows/) or PREFECT__FLOW_RUN_ID, or null

Training code attaches it to a checkpoint with::

    record = build_lineage(out_dir)                  # inside the DVC stage that writes out_dir
    write_lineage(out_dir, record)                   # out_dir/lineage.json, atomically
    save_file(tensors, out_dir / "model.safetensors", metadata=lineage_metadata(record))

(``vpdd.policy.checkpoint.save_vpdd_checkpoint(..., lineage=record)`` does both for the pre-trained model
and the policy.) :func:`read_lineage` reads lineage.json and falls back to the weights' metadata when the
file is gone; :func:`lineage_sources` and :func:`compare_records` tell whether the two copies agree.

The git commit is the commit the stage ran on; inside ``dvc repro`` the working tree is usually dirty
(data.dvc or params changed, dvc.lock being rewritten), so the commit plus the hashes, not the commit alone,
pin an output.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA = 1
LINEAGE_FILE = "lineage.json"
WEIGHTS_FILE = "model.safetensors"  # vpdd.train.checkpoint.WEIGHTS_NAME
METADATA_KEY = "vpdd.lineage"
# Upstream artefacts recorded by name: record key -> output path in dvc.yaml.
UPSTREAM_OUTPUTS = {"token_cache": "build/tokens", "tokenizer": "models/tokenizer", "pretrain": "models/pretrain"}
VERSION_PACKAGES = ("vpdd", "torch", "triton", "numpy", "safetensors", "dvc", "prefect", "metaworld", "mujoco")
FLOW_RUN_ENV = ("VPDD_FLOW_RUN_ID", "PREFECT__FLOW_RUN_ID")


# --------------------------------------------------------------------------------------------- DVC files


def _yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        return {}
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(doc).__name__}")
    return doc


def _yaml_text(text: str | bytes, source: str) -> dict[str, Any]:
    import yaml

    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        log.warning("%s: not valid YAML (%s); skipped", source, err)
        return {}
    return doc if isinstance(doc, dict) else {}


def find_repo_root(start: str | os.PathLike | None = None) -> Path:
    """The DVC repository containing ``start``: ``DVC_ROOT`` when DVC runs a stage, else the nearest parent
    with a ``.dvc`` folder, else the nearest with a ``.git`` folder, else ``start`` itself."""
    if start is None and os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    here = Path(start or os.getcwd()).resolve()
    chain = [here, *here.parents]
    for marker in (".dvc", ".git"):
        for d in chain:
            if (d / marker).is_dir():
                return d
    return here


def data_version(repo: str | os.PathLike = ".", dvc_file: str = "data.dvc") -> dict[str, Any] | None:
    """The raw-data version pinned by ``dvc_file``: ``{"dvc_file", "path", "md5", "size", "nfiles"}``."""
    outs = _yaml(Path(repo) / dvc_file).get("outs") or []
    if not outs or not isinstance(outs[0], dict) or not outs[0].get("md5"):
        return None
    out = outs[0]
    return {"dvc_file": dvc_file, "path": out.get("path"), "md5": out["md5"], "size": out.get("size"),
            "nfiles": out.get("nfiles")}


def read_dvc_lock(repo: str | os.PathLike = ".") -> dict[str, Any]:
    """``repo/dvc.lock`` as a dict (empty when there is none)."""
    return _yaml(Path(repo) / "dvc.lock")


def lock_outputs(lock: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{out path: {"md5", "stage", "size", "nfiles"}}`` for every output recorded in a dvc.lock document."""
    result: dict[str, dict[str, Any]] = {}
    for stage, entry in (lock.get("stages") or {}).items():
        for out in (entry or {}).get("outs") or []:
            if isinstance(out, dict) and out.get("path"):
                result[_norm_path(out["path"])] = {"md5": out.get("md5"), "stage": stage, "size": out.get("size"),
                                                   "nfiles": out.get("nfiles")}
    return result


def lock_stage_for(repo: str | os.PathLike, out_path: str) -> dict[str, Any] | None:
    """What the current dvc.lock says about the stage that outputs ``out_path`` (relative to ``repo``)."""
    out_path = _norm_path(out_path)
    for stage, entry in (_yaml(Path(repo) / "dvc.lock").get("stages") or {}).items():
        for out in (entry or {}).get("outs") or []:
            if _norm_path(out.get("path", "")) == out_path:
                return {
                    "stage": stage,
                    "cmd": entry.get("cmd"),
                    "md5": out.get("md5"),
                    "deps": {_norm_path(d["path"]): d.get("md5") for d in entry.get("deps") or []},
                    "params": entry.get("params") or {},
                }
    return None


@dataclass
class StageInfo:
    """One stage of dvc.yaml, as the flows need it: what it reads and what it reports."""

    name: str
    deps: list[str] = field(default_factory=list)
    outs: list[str] = field(default_factory=list)
    params: list[str] = field(default_factory=list)  # dotted keys of params.yaml
    metrics: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)


def _paths(entries: list[Any] | None) -> list[str]:
    out = []
    for e in entries or []:
        if isinstance(e, str):
            out.append(_norm_path(e))
        elif isinstance(e, dict):
            out.extend(_norm_path(k) for k in e)
    return out


def pipeline_stages(repo: str | os.PathLike = ".") -> dict[str, StageInfo]:
    """The stages of ``repo/dvc.yaml`` in file order (``foreach``/``matrix`` stages are not expanded)."""
    stages: dict[str, StageInfo] = {}
    for name, spec in (_yaml(Path(repo) / "dvc.yaml").get("stages") or {}).items():
        spec = spec or {}
        keys: list[str] = []
        for p in spec.get("params") or []:
            if isinstance(p, str):
                keys.append(p)
            elif isinstance(p, dict):
                keys.extend(k for file, ks in p.items() if Path(file).name == "params.yaml" for k in ks or [])
        metrics = _paths(spec.get("metrics"))
        plots = _paths(spec.get("plots"))
        stages[name] = StageInfo(name, _paths(spec.get("deps")), _paths(spec.get("outs")) + metrics + plots,
                                 keys, metrics, plots)
    return stages


def upstream_stages(stages: dict[str, StageInfo], targets: list[str] | None) -> list[str]:
    """``targets`` and every stage they depend on, in dvc.yaml order; all stages when ``targets`` is empty."""
    if not targets:
        return list(stages)
    producer = {out: s.name for s in stages.values() for out in s.outs}

    def producers(dep: str) -> set[str]:
        return {name for out, name in producer.items() if dep == out or dep.startswith(out + "/")
                or out.startswith(dep + "/")}

    wanted: set[str] = set()
    todo = [t for t in targets if t in stages]
    while todo:
        name = todo.pop()
        if name in wanted:
            continue
        wanted.add(name)
        for dep in stages[name].deps:
            todo.extend(producers(dep) - wanted)
    return [s for s in stages if s in wanted]


# ----------------------------------------------------------------------------------------------- params


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def params_digest(params: dict[str, Any], keys: list[str] | None = None) -> dict[str, Any]:
    """``{"keys", "sha256"}``: sha256 of the canonical JSON of ``{key: value}`` for the dotted ``keys``
    (every top-level section when ``keys`` is None). A missing key hashes as null."""
    keys = sorted(keys) if keys else sorted(params)
    selected = {k: _lookup(params, k) for k in keys}
    return {"keys": keys, "sha256": hashlib.sha256(canonical_json(selected).encode("utf-8")).hexdigest()}


# ------------------------------------------------------------------------------------------ the record


def _norm_path(p: str) -> str:
    return Path(p).as_posix().rstrip("/").removeprefix("./")


def _relative(path: Path, repo: Path) -> str:
    try:
        return path.resolve().relative_to(repo.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def _kernel_impl(config_value: str, device_type: str | None) -> str | None:
    try:
        from vpdd_kernels.dispatch import resolve_impl
    except ImportError:
        return None
    if device_type is None:
        # Only ask CUDA when torch is already loaded: a lineage record must not pay a torch import.
        torch = sys.modules.get("torch")
        device_type = "cuda" if torch is not None and torch.cuda.is_available() else "cpu"
    try:
        return resolve_impl(config_value, device_type)
    except ValueError as err:
        log.warning("kernel implementation: %s", err)
        return None


def flow_run_id() -> str | None:
    """The Prefect flow run this process belongs to, from the environment (never imports prefect)."""
    for name in FLOW_RUN_ENV:
        if os.environ.get(name):
            return os.environ[name]
    return None


def robot_data_source(repo: str | os.PathLike, params: dict[str, Any]) -> dict[str, Any] | None:
    """The identity of imported robot data: ``<data.robot.episodes>/source.json`` (written by ``vpdd data
    import-lerobot``: dataset path or repo id, revision, content hash), or None for vpdd's own data."""
    episodes = _lookup(params, "data.robot.episodes")
    path = Path(repo) / str(episodes) / "source.json" if episodes else None
    if path is None or not path.is_file():
        return None
    try:
        src = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    keys = ("format", "codebase_version", "path", "repo_id", "revision", "content_sha256", "camera")
    return {"store": str(episodes), **{k: src.get(k) for k in keys}}


def build_lineage(
    out_dir: str | os.PathLike,
    *,
    repo: str | os.PathLike | None = None,
    stage: str | None = None,
    params_file: str = "params.yaml",
    params_keys: list[str] | None = None,
    data_dvc: str = "data.dvc",
    device_type: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The lineage record of ``out_dir`` (see the module docstring for the fields).

    ``repo`` defaults to the DVC repository around the current directory (``DVC_ROOT`` inside a stage);
    ``stage`` to ``DVC_STAGE``. The params hashed are ``params_keys`` if given, else the params the stage
    lists in dvc.yaml, else the whole params file. ``extra`` is merged in last (e.g. a checkpoint hash).
    """
    from vpdd.utils.machine import git_commit, package_versions

    root = Path(repo).resolve() if repo is not None else find_repo_root()
    stage = stage or os.environ.get("DVC_STAGE") or None
    if stage and ":" in stage:  # DVC_STAGE is "dvc.yaml:name" for stages outside the root dvc.yaml
        stage = stage.rsplit(":", 1)[1]
    params = _yaml(root / params_file)
    keys = params_keys
    stages = pipeline_stages(root)
    if keys is None and stage:
        info = stages.get(stage)
        keys = info.params if info and info.params else None
    outs = lock_outputs(_yaml(root / "dvc.lock"))
    output = _relative(Path(out_dir), root)
    artifacts = {}
    for name, path in UPSTREAM_OUTPUTS.items():
        hit = outs.get(path)
        if hit and not _is_upstream(stages, stage, hit["stage"], path, output):
            hit = None  # this output itself, or one the stage does not depend on (e.g. from an earlier run)
        artifacts[name] = {"path": path, "md5": hit["md5"], "stage": hit["stage"]} if hit else None
    kernel_cfg = _lookup(params, "kernel.impl") or "auto"
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "output": output,
        "stage": stage,
        "experiment": os.environ.get("DVC_EXP_NAME") or None,
        "git": git_commit(cwd=str(root)),
        "data": data_version(root, data_dvc),
        "robot_data": robot_data_source(root, params),
        "artifacts": artifacts,
        "params": {"file": params_file, **params_digest(params, keys)},
        "kernel_impl": _kernel_impl(str(kernel_cfg), device_type),
        "versions": package_versions(VERSION_PACKAGES),
        "prefect_flow_run_id": flow_run_id(),
    }
    if extra:
        record.update(extra)
    return record


def _is_upstream(stages: dict[str, StageInfo], stage: str | None, producer: str, path: str, output: str) -> bool:
    """Whether ``path`` (written by stage ``producer``) feeds ``stage``: a stage upstream of it in dvc.yaml.
    Without stage information, anything but the output itself counts."""
    if path == output or producer == stage:
        return False
    if stage and stage in stages:
        return producer in upstream_stages(stages, [stage])
    return True


def write_lineage(out_dir: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write ``out_dir/lineage.json`` atomically and return its path."""
    from vpdd.utils.io import atomic_write_json

    return atomic_write_json(Path(out_dir) / LINEAGE_FILE, record)


def lineage_metadata(record: dict[str, Any]) -> dict[str, str]:
    """The record as a flat ``str -> str`` dict for ``safetensors`` metadata.

    ``vpdd.lineage`` holds the whole record as JSON (what :func:`lineage_from_metadata` reads back); the
    other keys (``vpdd.lineage.data.md5``, ``vpdd.lineage.git.commit``, ...) are its leaves, dotted, for a
    quick look with any safetensors reader. Strings stay as they are; other values are JSON (null -> "null").
    """
    flat: dict[str, str] = {METADATA_KEY: canonical_json(record)}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(f"{prefix}.{k}", v)
        else:
            flat[prefix] = node if isinstance(node, str) else canonical_json(node)

    walk(METADATA_KEY, record)
    return flat


def lineage_from_metadata(metadata: dict[str, str] | None) -> dict[str, Any] | None:
    """The record stored by :func:`lineage_metadata`, or None if the metadata holds none."""
    if not metadata or METADATA_KEY not in metadata:
        return None
    return json.loads(metadata[METADATA_KEY])


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, read from its JSON header (no torch needed)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        n = int.from_bytes(head, "little")
        if n <= 0 or n > 100_000_000:
            raise ValueError(f"{path}: not a safetensors file (header length {n})")
        try:
            header = json.loads(f.read(n))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not a safetensors file ({err})") from None
    return header.get("__metadata__") or {}


def _json_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(record, dict) or "data" not in record:
        raise ValueError(f"{path}: not a lineage record (no 'data' key)")
    return record


def _weights_record(path: Path) -> dict[str, Any] | None:
    try:
        return lineage_from_metadata(safetensors_metadata(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: the '{METADATA_KEY}' metadata is not valid JSON: {err}") from None


def lineage_sources(directory: str | os.PathLike) -> dict[str, dict[str, Any] | None]:
    """Both copies of an output directory's record: ``{"lineage.json": record, "model.safetensors": record}``,
    None for a copy that is absent (no file, or weights whose metadata hold no lineage)."""
    directory = Path(directory)
    json_file, weights = directory / LINEAGE_FILE, directory / WEIGHTS_FILE
    return {LINEAGE_FILE: _json_record(json_file) if json_file.is_file() else None,
            WEIGHTS_FILE: _weights_record(weights) if weights.is_file() else None}


def _leaves(prefix: str, node: Any, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(node, dict) and node:
        for k, v in node.items():
            _leaves(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = node
    return out


def compare_records(a: dict[str, Any], b: dict[str, Any], names: tuple[str, str] = (LINEAGE_FILE, WEIGHTS_FILE)
                    ) -> list[str]:
    """Where two lineage records differ, one line per dotted key (empty when they are the same)."""
    la = _leaves("", json.loads(canonical_json(a)), {})
    lb = _leaves("", json.loads(canonical_json(b)), {})
    missing = object()
    lines = []
    for key in sorted(set(la) | set(lb)):
        va, vb = la.get(key, missing), lb.get(key, missing)
        if va != vb:
            show = [("(absent)" if v is missing else json.dumps(v, default=str)) for v in (va, vb)]
            lines.append(f"{key}: {names[0]} {show[0]}, {names[1]} {show[1]}")
    return lines


def read_lineage(path: str | os.PathLike) -> dict[str, Any]:
    """The lineage record of an output directory (its lineage.json, else the copy in its model.safetensors
    metadata), of a lineage JSON file, or of a safetensors file."""
    path = Path(path)
    if path.is_dir():
        if (path / LINEAGE_FILE).is_file():
            return _json_record(path / LINEAGE_FILE)
        if not (path / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{path}: no lineage record (expected {LINEAGE_FILE} or {WEIGHTS_FILE} with "
                                    f"'{METADATA_KEY}' metadata)")
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no lineage record (expected {LINEAGE_FILE} or a .safetensors file)")
    if path.suffix == ".safetensors":
        record = _weights_record(path)
        if record is None:
            raise ValueError(f"{path}: the safetensors metadata holds no '{METADATA_KEY}' key")
        return record
    return _json_record(path)


def short(md5: str | None, n: int = 12) -> str:
    if not md5:
        return "-"
    return md5[:n] + (".dir" if md5.endswith(".dir") else "")


def chain_lines(record: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The chain from raw data to the output as ``(step, path, md5)`` rows."""
    rows = []
    data = record.get("data") or {}
    rows.append(("raw data", f"{data.get('path') or '-'} ({data.get('dvc_file') or 'data.dvc'})", data.get("md5")))
    for name, label in (("token_cache", "token cache"), ("tokenizer", "tokenizer"), ("pretrain", "pre-trained")):
        art = (record.get("artifacts") or {}).get(name)
        if art:
            rows.append((label, art["path"], art.get("md5")))
    rows.append(("output", record.get("output") or "-", None))
    return rows


def lineage_markdown(record: dict[str, Any], lock: dict[str, Any] | None = None) -> str:
    """A markdown rendering of a record (for a Prefect artifact or a PR comment)."""
    git = record.get("git") or {}
    lines = [f"## Lineage of `{record.get('output')}`", "", "| step | path | md5 |", "| --- | --- | --- |"]
    lines += [f"| {s} | `{p}` | `{m or '-'}` |" for s, p, m in chain_lines(record)]
    params = record.get("params") or {}
    lines += [
        "",
        f"- stage: `{record.get('stage') or '-'}`, experiment: `{record.get('experiment') or '-'}`",
        f"- git: `{git.get('commit') or '-'}`{' (dirty)' if git.get('dirty') else ''}",
        f"- params: sha256 `{params.get('sha256', '-')}` over {', '.join(params.get('keys') or []) or '-'}",
        f"- kernel implementation: `{record.get('kernel_impl') or '-'}`",
        f"- Prefect flow run: `{record.get('prefect_flow_run_id') or '-'}`",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in (record.get("versions") or {}).items() if v),
    ]
    if lock:
        lines += ["", f"dvc.lock: stage `{lock['stage']}` output md5 `{lock.get('md5')}`"]
        lines += [f"- dep `{p}`: `{m}`" for p, m in lock.get("deps", {}).items()]
    return "\n".join(lines) + "\n"


def check_against_lock(record: dict[str, Any], repo: str | os.PathLike) -> list[str]:
    """Where the record disagrees with the current dvc.lock / data.dvc (empty when consistent)."""
    problems = []
    data = data_version(repo)
    rec_data = (record.get("data") or {}).get("md5")
    if data and rec_data and data["md5"] != rec_data:
        problems.append(f"data.dvc now pins {data['md5']}, the output was made from {rec_data}")
    outs = lock_outputs(_yaml(Path(repo) / "dvc.lock"))
    for name, art in (record.get("artifacts") or {}).items():
        now = outs.get(art["path"]) if art else None
        if art and now and now.get("md5") != art.get("md5"):
            problems.append(f"{name} ({art['path']}): dvc.lock now has {now.get('md5')}, the output used "
                            f"{art.get('md5')}")
    return problems


# ----------------------------------------------------------------- outputs made from a data version


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


def _cache_dir(repo: Path) -> Path:
    """The DVC cache folder: ``cache.dir`` from .dvc/config(.local), else .dvc/cache."""
    found = repo / ".dvc" / "cache"
    for name in ("config", "config.local"):
        cfg = configparser.ConfigParser()
        try:
            cfg.read(repo / ".dvc" / name)
        except configparser.Error:
            continue
        if cfg.has_option("cache", "dir"):
            d = Path(os.path.expanduser(cfg.get("cache", "dir")))
            found = d if d.is_absolute() else (repo / ".dvc" / d).resolve()
    return found


def _cache_read(cache: Path, md5: str) -> bytes | None:
    for base in (cache / "files" / "md5", cache):  # DVC 3 layout, then the DVC 2 one
        p = base / md5[:2] / md5[2:]
        if p.is_file():
            return p.read_bytes()
    return None


def _lineage_in_cache(cache: Path, out_md5: str | None) -> dict[str, Any] | None:
    if not out_md5 or not out_md5.endswith(".dir"):
        return None
    manifest = _cache_read(cache, out_md5)
    if manifest is None:
        return None
    for entry in json.loads(manifest):
        if entry.get("relpath") == LINEAGE_FILE and entry.get("md5"):
            blob = _cache_read(cache, entry["md5"])
            return json.loads(blob) if blob else None
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
    cache = _cache_dir(root)
    labels = _rev_labels(root)
    log_args = ["log", "--all", "--format=%H"]
    if max_revs:
        log_args.append(f"--max-count={max_revs}")
    revs = _git(root, *log_args, "--", "dvc.lock").split()
    found: dict[tuple[str, str], dict[str, Any]] = {}

    def consider(where: str, lock: dict[str, Any], read_git: Any) -> None:
        for out_path, out in lock_outputs(lock).items():
            if path and out_path != _norm_path(path):
                continue
            key = (out_path, out.get("md5") or "")
            if key in found:
                found[key]["seen_in"].append(where)
                continue
            lineage_path = out_path if out_path.endswith(LINEAGE_FILE) else f"{out_path}/{LINEAGE_FILE}"
            record = read_git(lineage_path)
            if record is None:
                record = _lineage_in_cache(cache, out.get("md5"))
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

    consider("workspace", _yaml(root / "dvc.lock"), from_workspace)
    batch = _GitBatch(root)
    try:
        for rev in revs:
            text = batch.read(f"{rev}:dvc.lock")
            if text is None:
                continue

            def from_git(rel: str, rev: str = rev) -> dict[str, Any] | None:
                blob = batch.read(f"{rev}:{rel}")
                try:
                    return json.loads(blob) if blob else None
                except json.JSONDecodeError:
                    return None

            names = labels.get(rev, [])
            consider(f"{rev[:10]}" + (f" ({', '.join(names)})" if names else ""),
                     _yaml_text(text, f"{rev}:dvc.lock"), from_git)
    finally:
        batch.close()
    return list(found.values())
