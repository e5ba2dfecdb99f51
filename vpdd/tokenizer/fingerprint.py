"""The code fingerprint of tokenizer training: a checkpoint made by different code is not resumed as the same
run. (The raw-data version and the index digests come from :mod:`vpdd.lineage`.)"""

from __future__ import annotations

import hashlib
from pathlib import Path


def code_digest() -> str:
    """sha256 of the source files that define tokenizer training (this package and the shared checkpoint
    and distributed helpers): a change means a checkpoint may no longer be resumed as the same run."""
    root = Path(__file__).resolve().parent
    files = sorted(root.glob("*.py")) + [
        root.parent / "train" / "checkpoint.py",
        root.parent / "train" / "distributed.py",
    ]
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.parent.name}/{f.name}\n".encode())
        h.update(f.read_bytes())
    return h.hexdigest()
