"""Where tokenizer outputs came from: the raw-data version pinned by DVC and digests of the data indexes.

The raw-data version is the ``md5`` of the first out in ``data.dvc`` (the file ``dvc add data`` writes at
the repository root); ``None`` when there is no such file (for example outside the repository).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def data_version(data_dvc: str | Path | None = "data.dvc") -> str | None:
    """The md5 recorded in ``data.dvc`` (read with yaml), or None if the file does not exist."""
    if data_dvc is None:
        return None
    path = Path(data_dvc)
    if not path.is_file():
        return None
    import yaml

    try:
        doc = yaml.safe_load(path.read_text()) or {}
        outs = doc.get("outs") or []
        md5 = outs[0].get("md5") if outs else None
        return str(md5) if md5 else None
    except (yaml.YAMLError, AttributeError, IndexError) as err:
        log.warning("%s: cannot read the data version (%s); recording null", path, err)
        return None


def index_digest(root: str | Path) -> str | None:
    """sha256 of ``root/index.json`` (robot episodes and ingested corpora both have one)."""
    index = Path(root) / "index.json"
    if not index.is_file():
        return None
    return hashlib.sha256(index.read_bytes()).hexdigest()


def code_digest() -> str:
    """sha256 of the source files that define tokenizer training (this package and the training runtime,
    :mod:`vpdd.runtime`): a change means a checkpoint may no longer be resumed as the same run."""
    root = Path(__file__).resolve().parent
    files = sorted(root.glob("*.py")) + sorted((root.parent / "runtime").glob("*.py"))
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.parent.name}/{f.name}\n".encode())
        h.update(f.read_bytes())
    return h.hexdigest()
