"""The two stored copies of a lineage record: ``lineage.json`` in the output directory and the same record in
the ``model.safetensors`` metadata (so a weights file copied out of the repository still names its data).

Training code attaches a record with ``vpdd.models.checkpoint.save_vpdd_checkpoint(..., lineage=record)``,
which writes ``lineage.json`` and passes :func:`lineage_metadata` to ``save_checkpoint(...,
weights_metadata=...)``. :func:`read_lineage` reads lineage.json and falls back to the weights' metadata when
the file is gone; :func:`lineage_sources` and :func:`compare_records` tell whether the two copies agree.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vpdd.lineage.record import canonical_json

LINEAGE_FILE = "lineage.json"
WEIGHTS_FILE = "model.safetensors"  # vpdd.runtime.checkpoint.WEIGHTS_NAME
METADATA_KEY = "vpdd.lineage"


def _leaves(prefix: str, node: Any, out: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{dotted key: value}`` of the leaves of nested dicts (an empty dict is a leaf), below ``prefix``."""
    out = {} if out is None else out
    if isinstance(node, dict) and node:
        for k, v in node.items():
            _leaves(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = node
    return out


def lineage_metadata(record: dict[str, Any]) -> dict[str, str]:
    """The record as a flat ``str -> str`` dict for ``safetensors`` metadata.

    ``vpdd.lineage`` holds the whole record as JSON (what :func:`lineage_from_metadata` reads back); the
    other keys (``vpdd.lineage.data.md5``, ``vpdd.lineage.git.commit``, ...) are its leaves, dotted, for a
    quick look with any safetensors reader. Strings stay as they are; other values are JSON (null -> "null").
    """
    flat = {METADATA_KEY: canonical_json(record)}
    flat.update((k, v if isinstance(v, str) else canonical_json(v)) for k, v in _leaves(METADATA_KEY, record).items())
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


def compare_records(a: dict[str, Any], b: dict[str, Any], names: tuple[str, str] = (LINEAGE_FILE, WEIGHTS_FILE)
                    ) -> list[str]:
    """Where two lineage records differ, one line per dotted key (empty when they are the same)."""
    la, lb = (_leaves("", json.loads(canonical_json(r))) for r in (a, b))
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
