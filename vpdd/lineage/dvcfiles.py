"""The one reader of DVC's files in the library: ``data.dvc``, ``dvc.lock``, ``dvc.yaml`` and the DVC cache.

Everything here reads plain YAML/JSON; it never imports ``dvc`` (nor ``prefect``):

- ``data.dvc``: the raw-data version (the md5 of ``data/``, a ``.dir`` hash);
- ``dvc.lock``: the md5 of every stage output; DVC writes a stage's entry as soon as that stage completes,
  so a stage that runs inside ``dvc repro`` sees the hashes of the upstream stages of the same run;
- ``dvc.yaml``: the stage list (deps, outs, params, metrics, plots), for the Prefect flows, the params hash
  of a lineage record and the test that deps cover the code a stage imports;
- the local DVC cache (``.dvc/cache/files/md5/...``), to read a file inside a cached directory output.
"""

from __future__ import annotations

import configparser
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DATA_DVC = "data.dvc"


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML mapping (empty when the file does not exist); ValueError naming the file when it is not one."""
    import yaml

    path = Path(path)
    if not path.is_file():
        return {}
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(doc).__name__}")
    return doc


def yaml_text(text: str | bytes, source: str) -> dict[str, Any]:
    """A YAML mapping from text (e.g. a dvc.lock at an old git revision); empty, with a warning, when bad."""
    import yaml

    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        log.warning("%s: not valid YAML (%s); skipped", source, err)
        return {}
    return doc if isinstance(doc, dict) else {}


def norm_path(p: str) -> str:
    return Path(p).as_posix().rstrip("/").removeprefix("./")


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


# ------------------------------------------------------------------------------------------- data.dvc


def data_version(repo: str | os.PathLike = ".", dvc_file: str = DATA_DVC) -> dict[str, Any] | None:
    """The raw-data version pinned by ``dvc_file``: ``{"dvc_file", "path", "md5", "size", "nfiles"}``."""
    outs = read_yaml(Path(repo) / dvc_file).get("outs") or []
    if not outs or not isinstance(outs[0], dict) or not outs[0].get("md5"):
        return None
    out = outs[0]
    return {"dvc_file": dvc_file, "path": out.get("path"), "md5": out["md5"], "size": out.get("size"),
            "nfiles": out.get("nfiles")}


def data_md5(data_dvc: str | os.PathLike | None = DATA_DVC) -> str | None:
    """Just the md5 pinned by the ``.dvc`` file at ``data_dvc``; None when there is no such file, and None
    with a warning when it cannot be read (an output's record must not fail on it)."""
    if data_dvc is None or not Path(data_dvc).is_file():
        return None
    path = Path(data_dvc)
    try:
        version = data_version(path.parent, path.name)
    except ValueError as err:
        log.warning("%s: cannot read the data version (%s); recording null", path, err)
        return None
    return str(version["md5"]) if version else None


# ------------------------------------------------------------------------------------------- dvc.lock


def read_dvc_lock(repo: str | os.PathLike = ".") -> dict[str, Any]:
    """``repo/dvc.lock`` as a dict (empty when there is none)."""
    return read_yaml(Path(repo) / "dvc.lock")


def lock_outputs(lock: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{out path: {"md5", "stage", "size", "nfiles"}}`` for every output recorded in a dvc.lock document."""
    result: dict[str, dict[str, Any]] = {}
    for stage, entry in (lock.get("stages") or {}).items():
        for out in (entry or {}).get("outs") or []:
            if isinstance(out, dict) and out.get("path"):
                result[norm_path(out["path"])] = {"md5": out.get("md5"), "stage": stage, "size": out.get("size"),
                                                  "nfiles": out.get("nfiles")}
    return result


def lock_stage_for(repo: str | os.PathLike, out_path: str) -> dict[str, Any] | None:
    """What the current dvc.lock says about the stage that outputs ``out_path`` (relative to ``repo``)."""
    out_path = norm_path(out_path)
    for stage, entry in (read_dvc_lock(repo).get("stages") or {}).items():
        for out in (entry or {}).get("outs") or []:
            if norm_path(out.get("path", "")) == out_path:
                return {
                    "stage": stage,
                    "cmd": entry.get("cmd"),
                    "md5": out.get("md5"),
                    "deps": {norm_path(d["path"]): d.get("md5") for d in entry.get("deps") or []},
                    "params": entry.get("params") or {},
                }
    return None


# ------------------------------------------------------------------------------------------- dvc.yaml


@dataclass
class StageInfo:
    """One stage of dvc.yaml: its command, what it reads and what it writes and reports."""

    name: str
    deps: list[str] = field(default_factory=list)
    outs: list[str] = field(default_factory=list)  # outs, metrics and plots
    params: list[str] = field(default_factory=list)  # dotted keys of params.yaml
    metrics: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    cmd: str = ""


def _paths(entries: list[Any] | None) -> list[str]:
    out = []
    for e in entries or []:
        if isinstance(e, str):
            out.append(norm_path(e))
        elif isinstance(e, dict):
            out.extend(norm_path(k) for k in e)
    return out


_VAR = re.compile(r"\$\{\s*([^}]+?)\s*\}")


def _interpolate(node: Any, scope: dict[str, Any]) -> Any:
    """``${a.b}`` replaced from ``scope`` (dotted keys), through lists and mappings; unknown names stay."""
    if isinstance(node, dict):
        return {_interpolate(k, scope): _interpolate(v, scope) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, scope) for v in node]
    if not isinstance(node, str):
        return node
    whole = _VAR.fullmatch(node)
    if whole:  # a whole-string reference keeps the value's type (a list for a matrix axis)
        value = lookup(scope, whole[1])
        return node if value is None else value
    return _VAR.sub(lambda m: str(v) if (v := lookup(scope, m[1])) is not None else m[0], node)


def _expand(name: str, spec: dict[str, Any], params: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A ``matrix:`` stage as DVC expands it: ``name@v`` (one axis) or ``name@v1-v2`` per combination,
    with ``${item.<axis>}`` and params.yaml variables filled in. Other stages come back with params.yaml
    variables filled in."""
    matrix = spec.get("matrix")
    if not isinstance(matrix, dict):
        return [(name, _interpolate(spec, params))]
    axes = {k: _interpolate(v, params) for k, v in matrix.items()}
    combos: list[dict[str, Any]] = [{}]
    for axis, values in axes.items():
        combos = [{**c, axis: v} for c in combos for v in (values if isinstance(values, list) else [values])]
    body = {k: v for k, v in spec.items() if k != "matrix"}
    return [(f"{name}@{'-'.join(str(v) for v in c.values())}", _interpolate(body, {**params, "item": c}))
            for c in combos]


def pipeline_stages(repo: str | os.PathLike = ".", expand: bool = False) -> dict[str, StageInfo]:
    """The stages of ``repo/dvc.yaml`` in file order. ``matrix`` stages stay one entry under their own name
    (what ``dvc repro NAME`` accepts) unless ``expand``, which gives one ``name@value`` entry per combination
    (dvc.lock's names), with ``${...}`` resolved from ``repo/params.yaml``."""
    doc = read_yaml(Path(repo) / "dvc.yaml")
    params = read_yaml(Path(repo) / "params.yaml") if expand else {}
    stages: dict[str, StageInfo] = {}
    for name, spec in (doc.get("stages") or {}).items():
        for full, s in _expand(name, spec or {}, params) if expand else [(name, spec or {})]:
            keys: list[str] = []
            for p in s.get("params") or []:
                if isinstance(p, str):
                    keys.append(p)
                elif isinstance(p, dict):
                    keys.extend(k for file, ks in p.items() if Path(file).name == "params.yaml" for k in ks or [])
            metrics, plots = _paths(s.get("metrics")), _paths(s.get("plots"))
            stages[full] = StageInfo(full, _paths(s.get("deps")), _paths(s.get("outs")) + metrics + plots, keys,
                                     metrics, plots, str(s.get("cmd") or ""))
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


def lookup(tree: dict[str, Any], dotted: str) -> Any:
    """``tree["a"]["b"]`` for ``"a.b"``; None when any part is missing."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


# ------------------------------------------------------------------------------------------ the cache


def cache_dir(repo: Path) -> Path:
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


def cache_read(cache: Path, md5: str) -> bytes | None:
    """The bytes DVC cached under ``md5`` (DVC 3 layout, then the DVC 2 one), or None."""
    for base in (cache / "files" / "md5", cache):
        p = base / md5[:2] / md5[2:]
        if p.is_file():
            return p.read_bytes()
    return None


def cached_file(cache: Path, dir_md5: str | None, relpath: str) -> bytes | None:
    """The file ``relpath`` inside the cached directory output ``dir_md5`` (a ``.dir`` hash), or None."""
    if not dir_md5 or not dir_md5.endswith(".dir"):
        return None
    manifest = cache_read(cache, dir_md5)
    if manifest is None:
        return None
    for entry in json.loads(manifest):
        if entry.get("relpath") == relpath and entry.get("md5"):
            return cache_read(cache, entry["md5"])
    return None
