"""Atomic output: nothing vpdd writes is ever left half-written under its final name.

Files are written to a temporary sibling and renamed into place (rename is atomic within a file
system); directories are built under a temporary sibling name and swapped in at the end.

Output-folder rule (:func:`check_output_dir`, applied by :func:`atomic_directory` to every command that
writes a folder): ``--out`` is refused when it is, contains or is inside one of the command's inputs, or
when it is a non-empty folder that the command did not write itself. A folder is recognised as the
command's own output by its marker: a file (glob) that the command always writes there, e.g.
``index.json``, rather than an extra file, so the bytes of pinned outputs do not change. ``force=True``
(``--force``) replaces such a folder deliberately; the input overlap is never forced. Temporary siblings
(``.NAME.*.tmp``, ``.NAME.old-*``) left by an interrupted run whose process is gone are removed first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any


class OutputFolderError(ValueError):
    """``--out`` would destroy something that is not this command's own earlier output."""


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def default_mode(path: str | os.PathLike) -> None:
    """Give a file or folder made by ``tempfile`` (0600 / 0700) the mode a plain ``open``/``mkdir`` gives
    (0666 / 0777 less the umask), so others can read what a command wrote."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~umask)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_write_png(path: str | os.PathLike, image, scale: int = 2) -> Path:
    """A uint8 (H, W, 3) array as a PNG, each pixel ``scale`` x ``scale`` (nearest neighbour)."""
    import io

    from PIL import Image

    img = Image.fromarray(image)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def _overlap(out: Path, src: Path) -> str | None:
    if out == src:
        return "is"
    if out in src.parents:
        return "contains"
    if src in out.parents:
        return "is inside"
    return None


def check_output_dir(
    path: str | os.PathLike,
    *,
    inputs: Iterable[str | os.PathLike] = (),
    marker: str | Callable[[Path], bool] | None = None,
    force: bool = False,
) -> Path:
    """Apply the output-folder rule (module docstring) to ``path``; raise :class:`OutputFolderError`."""
    path = Path(path)
    out = path.resolve()
    for src in inputs:
        if src is None:
            continue
        how = _overlap(out, Path(src).resolve())
        if how:
            raise OutputFolderError(
                f"--out {path} {how} the input {src}; writing it would delete the input. Choose another --out"
            )
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise OutputFolderError(f"--out {path} exists and is not a folder; remove it or choose another --out")
    if force or not path.is_dir() or not any(path.iterdir()):
        return path
    if (callable(marker) and marker(path)) or (isinstance(marker, str) and any(path.glob(marker))):
        return path
    if marker is None:
        what = "not written by vpdd"
    else:
        what = f"no {marker}" if isinstance(marker, str) else (marker.__doc__ or "not written by vpdd").strip()
    raise OutputFolderError(
        f"--out {path} is a non-empty folder that this command did not write ({what}); it would be replaced "
        "with everything in it. Choose another --out, or pass --force to replace it"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove ``.NAME.*.tmp`` / ``.NAME.old-*`` siblings of ``path`` left by processes that are gone."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for p in path.parent.glob(f".{path.name}.*"):
        rest = p.name[len(path.name) + 2 :]
        if rest.startswith("old-"):
            pid = rest[4:]
        elif rest.endswith(".tmp"):
            pid = rest.split(".", 1)[0]
        else:
            continue
        if pid.isdigit() and _pid_alive(int(pid)):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike,
    *,
    inputs: Iterable[str | os.PathLike] = (),
    marker: str | Callable[[Path], bool] | None = None,
    force: bool = False,
    check: bool = True,
) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block finishes without error.

    ``path`` must pass the output-folder rule (:func:`check_output_dir` with ``inputs``, ``marker``,
    ``force``) unless ``check=False`` (checkpoint saves, whose folder the training run checked already).
    """
    path = Path(path)
    if check:
        check_output_dir(path, inputs=inputs, marker=marker, force=force)
        clean_stale_temporaries(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    default_mode(tmp)
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
