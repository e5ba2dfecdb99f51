"""The lineage record of an output directory: which raw data, upstream artefacts, params, code revision and
flow run produced it.

A record (``build_lineage``) is a small JSON-able dict::

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
    kernel_impl          what the stage's scheduler ran ("triton" or "torch"; MaskReplaceScheduler.kernel_impl_for), or
                         null for a stage without diffusion
    versions             package versions (vpdd, torch, triton, numpy, dvc, prefect, ...)
    prefect_flow_run_id  VPDD_FLOW_RUN_ID (set by the flows in flows/) or PREFECT__FLOW_RUN_ID, or null

The git commit is the commit the stage ran on; inside ``dvc repro`` the working tree is usually dirty
(data.dvc or params changed, dvc.lock being rewritten), so the commit plus the hashes, not the commit alone,
pin an output. How the record is stored beside the weights: :mod:`vpdd.lineage.storage`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from vpdd.lineage.dvcfiles import (
    DATA_DVC,
    StageInfo,
    data_version,
    find_repo_root,
    lock_outputs,
    lookup,
    pipeline_stages,
    read_dvc_lock,
    read_yaml,
    upstream_stages,
)

log = logging.getLogger(__name__)

SCHEMA = 1
# Upstream artefacts recorded by name: record key -> output path in dvc.yaml.
UPSTREAM_OUTPUTS = {"token_cache": "build/tokens", "tokenizer": "models/tokenizer", "pretrain": "models/pretrain"}
VERSION_PACKAGES = ("vpdd", "torch", "triton", "numpy", "safetensors", "dvc", "prefect", "metaworld", "mujoco")
FLOW_RUN_ENV = ("VPDD_FLOW_RUN_ID", "PREFECT__FLOW_RUN_ID")


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def params_digest(params: dict[str, Any], keys: list[str] | None = None) -> dict[str, Any]:
    """``{"keys", "sha256"}``: sha256 of the canonical JSON of ``{key: value}`` for the dotted ``keys``
    (every top-level section when ``keys`` is None). A missing key hashes as null."""
    keys = sorted(keys) if keys else sorted(params)
    selected = {k: lookup(params, k) for k in keys}
    return {"keys": keys, "sha256": hashlib.sha256(canonical_json(selected).encode("utf-8")).hexdigest()}


def index_digest(root: str | os.PathLike) -> str | None:
    """sha256 of ``root/index.json`` (robot episodes and ingested corpora both have one), or None."""
    index = Path(root) / "index.json"
    if not index.is_file():
        return None
    return hashlib.sha256(index.read_bytes()).hexdigest()


def flow_run_id() -> str | None:
    """The Prefect flow run this process belongs to, from the environment (never imports prefect)."""
    for name in FLOW_RUN_ENV:
        if os.environ.get(name):
            return os.environ[name]
    return None


def _relative(path: Path, repo: Path) -> str:
    try:
        return path.resolve().relative_to(repo.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def _is_upstream(stages: dict[str, StageInfo], stage: str | None, producer: str, path: str, output: str) -> bool:
    """Whether ``path`` (written by stage ``producer``) feeds ``stage``: a stage upstream of it in dvc.yaml.
    Without stage information, anything but the output itself counts."""
    if path == output or producer == stage:
        return False
    if stage and stage in stages:
        return producer in upstream_stages(stages, [stage])
    return True


def robot_data_source(repo: str | os.PathLike, params: dict[str, Any]) -> dict[str, Any] | None:
    """The identity of imported robot data: ``<data.robot.episodes>/source.json`` (written by ``vpdd data
    import-lerobot``: dataset path or repo id, revision, content hash), or None for vpdd's own data."""
    episodes = lookup(params, "data.robot.episodes")
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
    data_dvc: str = DATA_DVC,
    kernel_impl: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The lineage record of ``out_dir`` (see the module docstring for the fields).

    ``repo`` defaults to the DVC repository around the current directory (``DVC_ROOT`` inside a stage);
    ``stage`` to ``DVC_STAGE``. The params hashed are ``params_keys`` if given, else the params the stage
    lists in dvc.yaml, else the whole params file. ``kernel_impl`` is what the stage's scheduler actually ran
    (``MaskReplaceScheduler.kernel_impl_for``; None for a stage without diffusion). ``extra`` is merged in last
    (e.g. a checkpoint hash).
    """
    from vpdd.utils.machine import git_commit, package_versions

    root = Path(repo).resolve() if repo is not None else find_repo_root()
    stage = stage or os.environ.get("DVC_STAGE") or None
    if stage and ":" in stage:  # DVC_STAGE is "dvc.yaml:name" for stages outside the root dvc.yaml
        stage = stage.rsplit(":", 1)[1]
    params = read_yaml(root / params_file)
    keys = params_keys
    stages = pipeline_stages(root)
    if keys is None and stage:
        info = stages.get(stage)
        keys = info.params if info and info.params else None
    outs = lock_outputs(read_dvc_lock(root))
    output = _relative(Path(out_dir), root)
    artifacts = {}
    for name, path in UPSTREAM_OUTPUTS.items():
        hit = outs.get(path)
        if hit and not _is_upstream(stages, stage, hit["stage"], path, output):
            hit = None  # this output itself, or one the stage does not depend on (e.g. from an earlier run)
        artifacts[name] = {"path": path, "md5": hit["md5"], "stage": hit["stage"]} if hit else None
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
        "kernel_impl": kernel_impl,
        "versions": package_versions(VERSION_PACKAGES),
        "prefect_flow_run_id": flow_run_id(),
    }
    if extra:
        record.update(extra)
    return record


def check_against_lock(record: dict[str, Any], repo: str | os.PathLike) -> list[str]:
    """Where the record disagrees with the current dvc.lock / data.dvc (empty when consistent)."""
    problems = []
    data = data_version(repo)
    rec_data = (record.get("data") or {}).get("md5")
    if data and rec_data and data["md5"] != rec_data:
        problems.append(f"data.dvc now pins {data['md5']}, the output was made from {rec_data}")
    outs = lock_outputs(read_dvc_lock(repo))
    for name, art in (record.get("artifacts") or {}).items():
        now = outs.get(art["path"]) if art else None
        if art and now and now.get("md5") != art.get("md5"):
            problems.append(f"{name} ({art['path']}): dvc.lock now has {now.get('md5')}, the output used "
                            f"{art.get('md5')}")
    return problems
