"""A deterministic ``.npz`` writer: the same arrays always give the same bytes.

``numpy.savez_compressed`` stamps each zip member with the current time, so two identical collections
would hash differently and DVC would see a new data version. This writer fixes the timestamps and the
member order; files stay readable with ``numpy.load``.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from vpdd.utils.io import atomic_write_bytes

_EPOCH = (1980, 1, 1, 0, 0, 0)


def npz_bytes(arrays: Mapping[str, np.ndarray], extra: Mapping[str, bytes] | None = None) -> bytes:
    """Serialise arrays (as ``NAME.npy`` members) and raw byte members into a deflated zip."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
        for name in sorted(extra or {}):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, extra[name])
    return buf.getvalue()


def save_npz(path: str | Path, arrays: Mapping[str, np.ndarray], extra: Mapping[str, bytes] | None = None) -> Path:
    """Write a deterministic npz atomically (temporary name, then rename)."""
    return atomic_write_bytes(path, npz_bytes(arrays, extra))
