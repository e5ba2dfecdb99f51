"""Self-describing checkpoint directories, written atomically, loadable without the code that wrote them.

Layout of one checkpoint directory::

    config.json           what the model is: {"kind": ..., "format": ..., "config": {...}, ...}
    model.safetensors     the weights needed for inference (float tensors, safetensors format); its
                          ``__metadata__`` holds ``format: pt`` and what the caller adds (e.g. the lineage
                          record, :func:`vpdd.lineage.lineage_metadata`), keys sorted so the bytes are stable
    training_state.pt     optional: optimizer, step, RNG states, training-only buffers (torch.save)
    meta.json             written last: step, sha256 of every file above, anything the caller adds

A directory is complete when ``meta.json`` exists and the hashes in it match the files. Saving builds the
directory under a temporary sibling name and swaps it into place (:func:`vpdd.utils.io.atomic_directory`),
so a killed process leaves either the previous checkpoint or the new one, never a mix. If the process dies
inside the two-rename swap, :func:`recover_checkpoint` (called by :func:`load_checkpoint` and
:func:`has_checkpoint`) puts the newest complete leftover back.

The identity of a model is :func:`checkpoint_hash`: the sha256 of ``config.json`` and
``model.safetensors`` (the training state is excluded, so a resumable copy and a stripped copy of the same
weights hash the same; the weights file's metadata is included). Token caches, policies and lineage records
cite this hash. safetensors writes its metadata map in a random order (a Rust ``HashMap``), so
:func:`write_safetensors` rewrites the header with sorted keys: the same tensors and metadata give the same
bytes, and the same hash, in every process.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vpdd.utils.io import atomic_directory, atomic_write_json, default_mode, sha256_file

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
STATE_NAME = "training_state.pt"
META_NAME = "meta.json"
IDENTITY_FILES = (CONFIG_NAME, WEIGHTS_NAME)


class CheckpointError(ValueError):
    """A checkpoint directory that is missing, incomplete, corrupted or does not fit; names the path."""


@dataclass
class Checkpoint:
    path: Path
    config: dict[str, Any]
    weights: dict[str, torch.Tensor]
    meta: dict[str, Any]
    training_state: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def step(self) -> int:
        return int(self.meta.get("step", 0))


def save_checkpoint(
    path: str | os.PathLike,
    *,
    config: dict[str, Any],
    weights: dict[str, torch.Tensor],
    training_state: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    extra_files: dict[str, bytes] | None = None,
    weights_metadata: dict[str, str] | None = None,
) -> Path:
    """Write a checkpoint directory atomically (replacing any previous one at ``path``).

    ``config`` must be JSON-serialisable; ``weights`` are saved with safetensors (contiguous CPU copies);
    ``training_state`` (anything ``torch.save`` handles with ``weights_only`` loading: tensors, numbers,
    strings, lists, dicts) goes to a separate file; ``meta`` (JSON) is merged into ``meta.json``;
    ``weights_metadata`` (``str -> str``) goes into the safetensors ``__metadata__`` next to ``format: pt``.
    """
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
    metadata = {"format": "pt", **_check_metadata(weights_metadata or {}, path)}
    with atomic_directory(path, check=False) as tmp:
        atomic_write_json(tmp / CONFIG_NAME, config)
        write_safetensors(tmp / WEIGHTS_NAME, tensors, metadata)
        files = [CONFIG_NAME, WEIGHTS_NAME]
        if training_state is not None:
            buf = io.BytesIO()
            torch.save(training_state, buf)
            (tmp / STATE_NAME).write_bytes(buf.getvalue())
            files.append(STATE_NAME)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
            files.append(name)
        record = dict(meta or {})
        record["files"] = {name: sha256_file(tmp / name) for name in files}
        record["checkpoint_hash"] = _identity_hash(record["files"])
        atomic_write_json(tmp / META_NAME, record)  # last: its presence marks the directory complete
        _default_permissions(tmp)
    return path


def _check_metadata(metadata: dict[str, str], path: Path) -> dict[str, str]:
    bad = {k: type(v).__name__ for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)}
    if bad:
        raise TypeError(f"{path}: safetensors metadata must map str to str; not so for {bad}")
    return metadata


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """``safetensors.torch.save_file`` with reproducible bytes: the header is rewritten with the metadata keys
    sorted (the tensor entries keep safetensors' order and offsets) and padded to 8 bytes as safetensors does."""
    from safetensors.torch import save

    blob = save(tensors, metadata=metadata)
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    ordered = {"__metadata__": header.pop("__metadata__"), **header}
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        f.write(memoryview(blob)[8 + n :])


def _default_permissions(folder: Path) -> None:
    """Temporary files and directories are created private (0600/0700); give the checkpoint the usual
    umask-based modes so other users and tools (DVC, a shared file system) can read it."""
    for p in (folder, *folder.iterdir()):
        default_mode(p)


def _identity_hash(file_hashes: dict[str, str]) -> str:
    h = hashlib.sha256()
    for name in IDENTITY_FILES:
        h.update(f"{name}:{file_hashes[name]}\n".encode())
    return h.hexdigest()


def checkpoint_hash(path: str | os.PathLike) -> str:
    """sha256 identifying the model in a checkpoint directory (config + weights, recomputed from disk)."""
    path = Path(path)
    recover_checkpoint(path)
    missing = [n for n in IDENTITY_FILES if not (path / n).is_file()]
    if missing:
        raise CheckpointError(f"{path}: not a checkpoint directory (missing {missing})")
    return _identity_hash({n: sha256_file(path / n) for n in IDENTITY_FILES})


def _verify(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(meta.json, None) if ``path`` is complete and its files match their hashes, else (None, the problem
    naming the file)."""
    meta_file = path / META_NAME
    try:
        meta = json.loads(meta_file.read_text())
    except OSError as err:
        return None, f"{meta_file}: unreadable ({err.strerror or err})"
    except ValueError as err:
        return None, f"{meta_file}: not valid JSON ({err})"
    files = meta.get("files") if isinstance(meta, dict) else None
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        return None, f"{meta_file}: invalid checkpoint metadata (no 'files' mapping of file names to sha256 hashes)"
    for name, digest in files.items():
        file = path / name
        if not file.is_file():
            return None, f"{file}: missing (listed in {META_NAME})"
        try:
            actual = sha256_file(file)
        except OSError as err:
            return None, f"{file}: unreadable ({err.strerror or err})"
        if actual != digest:
            return None, (f"{file}: corrupted (its sha256 {actual[:12]}... does not match {digest[:12]}... "
                          f"in {META_NAME})")
    return meta, None


def _complete(path: Path) -> dict[str, Any] | None:
    """meta.json of ``path`` if the directory is complete and its files match their hashes, else None."""
    return _verify(path)[0]


def recover_checkpoint(path: str | os.PathLike) -> bool:
    """Finish an interrupted save: if ``path`` is missing, move the newest complete leftover sibling
    (``.NAME.*.tmp`` being built, or ``.NAME.old-*`` being replaced) into place. Leftovers next to an
    existing checkpoint are removed. Returns True when ``path`` holds a checkpoint afterwards."""
    path = Path(path)
    if not path.parent.is_dir():
        return False
    leftovers = [p for p in path.parent.glob(f".{path.name}.*") if p.is_dir()]
    if not path.exists() and leftovers:
        done = [(meta.get("step", -1), p) for p in leftovers if (meta := _complete(p)) is not None]
        if done:
            _, best = max(done, key=lambda item: (item[0], item[1].stat().st_mtime))
            os.replace(best, path)
            log.warning("%s: recovered an interrupted checkpoint save from %s", path, best.name)
    if path.exists():
        for p in leftovers:
            if p.exists() and p != path:
                shutil.rmtree(p, ignore_errors=True)
    return (path / META_NAME).is_file()


def has_checkpoint(path: str | os.PathLike) -> bool:
    return recover_checkpoint(path)


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a checkpoint directory, with a clear error when it is not one."""
    path = Path(path)
    recover_checkpoint(path)
    cfg_file = path / CONFIG_NAME
    if not cfg_file.is_file():
        raise CheckpointError(f"{path}: not a checkpoint directory (no {CONFIG_NAME}); train one first")
    try:
        return json.loads(cfg_file.read_text())
    except ValueError as err:
        raise CheckpointError(f"{cfg_file}: not valid JSON ({err})") from None


def load_checkpoint(
    path: str | os.PathLike,
    *,
    training_state: bool = False,
    verify: bool = True,
    map_location: str | torch.device = "cpu",
) -> Checkpoint:
    """Read a checkpoint directory. ``verify`` checks every file against the hashes in ``meta.json``."""
    from safetensors.torch import load_file

    path = Path(path)
    if not recover_checkpoint(path):
        raise CheckpointError(f"{path}: no complete checkpoint here (missing {META_NAME})")
    if verify:
        meta, problem = _verify(path)
        if meta is None:
            raise CheckpointError(f"{path}: corrupted checkpoint: {problem}")
    else:
        try:
            meta = json.loads((path / META_NAME).read_text())
        except ValueError as err:
            raise CheckpointError(f"{path / META_NAME}: not valid JSON ({err})") from None
    config = read_config(path)
    try:
        weights = load_file(str(path / WEIGHTS_NAME), device=str(map_location))
    except Exception as err:  # SafetensorError, OSError, ...: a file that matches its (re-written) hash
        raise CheckpointError(f"{path / WEIGHTS_NAME}: not a readable safetensors file "
                              f"({type(err).__name__}: {err})") from None
    state = None
    if training_state:
        state_file = path / STATE_NAME
        if not state_file.is_file():
            raise CheckpointError(f"{path}: no {STATE_NAME}; this checkpoint cannot resume training")
        try:
            state = torch.load(state_file, map_location=map_location, weights_only=True)
        except Exception as err:  # UnpicklingError (a global outside torch's allow-list), EOFError, ...
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{state_file}: refused or unreadable training state "
                                  f"({type(err).__name__}: {reason}); nothing in it was executed") from None
    return Checkpoint(path=path, config=config, weights=weights, meta=meta, training_state=state)
