"""Metrics files that hold metrics: a stage's results go to the metrics file DVC shows (``dvc metrics show``,
``dvc exp show``), and what describes the run (machine, settings, versions, checkpoint hashes, per-window or
per-episode lists) to a sidecar beside it that DVC does not read as metrics: ``run.json`` next to a
``metrics.json``, ``<name>.run.json`` next to any other ``<name>.json``. :func:`read_record` joins them again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vpdd.utils.io import atomic_write_json


def sidecar_path(metrics_path: str | os.PathLike) -> Path:
    """``run.json`` beside a ``metrics.json``, ``NAME.run.json`` beside any other ``NAME.json``."""
    path = Path(metrics_path)
    return path.with_name("run.json" if path.name == "metrics.json" else f"{path.stem}.run.json")


def split_record(record: dict[str, Any], run_keys: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the metrics, the run description): ``run_keys`` go to the second, the rest to the first."""
    return ({k: v for k, v in record.items() if k not in run_keys},
            {k: record[k] for k in run_keys if k in record})


def write_metrics(path: str | os.PathLike, record: dict[str, Any], run_keys: tuple[str, ...]) -> Path:
    """Write ``record`` split in two: ``run_keys`` to the sidecar first, then the metrics file (atomically)."""
    metrics, run = split_record(record, run_keys)
    atomic_write_json(sidecar_path(path), run)
    return atomic_write_json(path, metrics)


def read_record(metrics_path: str | os.PathLike) -> dict[str, Any]:
    """A metrics file joined with its sidecar (when there is one): the record as it was before the split."""
    record = json.loads(Path(metrics_path).read_text())
    side = sidecar_path(metrics_path)
    if side.is_file():
        record.update(json.loads(side.read_text()))
    return record
