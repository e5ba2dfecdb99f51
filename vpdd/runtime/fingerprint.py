"""Run fingerprints: what must match for a checkpoint to be resumed as the same run.

A stage builds its fingerprint (configs without the cadence keys, data and upstream-artefact digests, a
digest of the code that defines a step, versions), stores it in the checkpoint, and on the next start
compares it with :func:`fingerprint_changes`; :meth:`vpdd.runtime.skeleton.Trainer.same_run` refuses or
restarts on a difference, naming it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the vpdd package


def code_digest(*rels: str) -> str:
    """sha256 of the source files under the vpdd package named by ``rels`` (files, or folders of .py files)."""
    h = hashlib.sha256()
    for rel in rels:
        p = PACKAGE_ROOT / rel
        for f in sorted(p.rglob("*.py")) if p.is_dir() else [p]:
            h.update(f.relative_to(PACKAGE_ROOT).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (what a saved fingerprint is compared with)."""
    return json.loads(json.dumps(obj, default=str))


def fingerprint_changes(old: dict[str, Any] | None, new: dict[str, Any], prefix: str = "") -> list[str]:
    """One line per differing leaf of two nested fingerprints (empty: the same run)."""
    if not isinstance(old, dict):
        return [f"{prefix or 'fingerprint'}: checkpoint has none"]
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += fingerprint_changes(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: checkpoint {str(a)[:80]!r} vs now {str(b)[:80]!r}")
    return out
