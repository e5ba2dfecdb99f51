"""Lineage for people: a record as text (``vpdd lineage``) or markdown (the flows' ``lineage`` artifact)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vpdd.lineage.dvcfiles import lock_outputs, lock_stage_for, pipeline_stages, read_dvc_lock
from vpdd.lineage.storage import LINEAGE_FILE, WEIGHTS_FILE, compare_records, lineage_sources


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


def _versions(record: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in (record.get("versions") or {}).items() if v)


def lineage_text(record: dict[str, Any]) -> list[str]:
    """The record as the lines ``vpdd lineage DIR`` prints: the chain with hashes, then git, params, kernel
    implementation, flow run and versions."""
    git = record.get("git") or {}
    params = record.get("params") or {}
    lines = [f"{record.get('output')}  (stage {record.get('stage') or '-'}, experiment "
             f"{record.get('experiment') or '-'})"]
    lines += [f"  {step:<12} {p:<32} {md5 or ''}" for step, p, md5 in chain_lines(record)]
    return lines + [
        f"git       {git.get('commit') or '-'}{' (dirty)' if git.get('dirty') else ''}",
        f"params    sha256 {params.get('sha256', '-')} over {', '.join(params.get('keys') or []) or '-'}",
        f"kernel    {record.get('kernel_impl') or '-'}",
        f"prefect   flow run {record.get('prefect_flow_run_id') or '-'}",
        f"versions  {_versions(record)}",
    ]


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
        f"- versions: {_versions(record)}",
    ]
    if lock:
        lines += ["", f"dvc.lock: stage `{lock['stage']}` output md5 `{lock.get('md5')}`"]
        lines += [f"- dep `{p}`: `{m}`" for p, m in lock.get("deps", {}).items()]
    return "\n".join(lines) + "\n"


def output_lineage_markdown(repo: str | os.PathLike, out: str) -> list[str]:
    """Markdown lines for one output's record (lineage.json, else the copy in model.safetensors), with a
    MISMATCH list when the two copies disagree; nothing for an output without a record."""
    repo = Path(repo)
    try:
        sources = lineage_sources(repo / out)
    except ValueError as err:  # a damaged record must not fail the run that reports it
        return ["", f"**{out}: lineage record unreadable:** {err}"]
    first, second = sources[LINEAGE_FILE], sources[WEIGHTS_FILE]
    record = first if first is not None else second
    if record is None:
        return []
    lines = ["", lineage_markdown(record, lock_stage_for(repo, out)).rstrip("\n")]
    if first is None:
        lines += ["", f"(no `{LINEAGE_FILE}` in `{out}`: read from the `{WEIGHTS_FILE}` metadata)"]
    elif second is not None and (diff := compare_records(first, second)):
        lines += ["", f"**MISMATCH:** `{out}/{LINEAGE_FILE}` and the `{WEIGHTS_FILE}` metadata differ:",
                  *[f"- {d}" for d in diff[:20]]]
    return lines


def outputs_markdown(repo: str | os.PathLike, stages: list[str] | None = None) -> list[str]:
    """A markdown table stage -> output -> md5 (from dvc.lock) for ``stages`` (default: all of dvc.yaml), then
    the record of every output directory among them that carries one."""
    repo = Path(repo)
    known = pipeline_stages(repo, expand=True)  # matrix stages by the names dvc.lock and DVC print
    outs = lock_outputs(read_dvc_lock(repo))
    shown = list(stages) if stages else list(known)
    lines = ["| stage | output | md5 (dvc.lock) |", "| --- | --- | --- |"]
    for name in shown:
        for out in known[name].outs if name in known else []:
            if out in outs:
                lines.append(f"| {name} | `{out}` | `{outs[out]['md5']}` |")
    for out in outs:
        if outs[out]["stage"] in shown and (repo / out).is_dir():
            lines += output_lineage_markdown(repo, out)
    return lines
