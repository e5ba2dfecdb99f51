"""Work-arounds for the pinned stack that must hold in every process, installed by importing vpdd.

The only torchvision matching torch 2.13.0 on the registry is a CUDA build; on a CPU-only torch its
``_meta_registrations`` module fails at import (``operator torchvision::nms does not exist``), which
breaks ``import open_clip`` and ``import timm``. Registering an empty module under that name first lets
torchvision's Python parts (transforms, models) import; its compiled ops are not used by vpdd.
See ../shared/spec/environment.md §7.
"""

from __future__ import annotations

import sys
import types
from importlib import metadata


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def patch_torchvision_for_cpu_torch() -> bool:
    """Stub ``torchvision._meta_registrations`` when torchvision sits beside a CPU-only torch build.

    Reads package metadata only (no torch import). Returns True when the stub was installed.
    """
    torch_v, tv_v = _version("torch"), _version("torchvision")
    if not torch_v or not tv_v or "torchvision" in sys.modules:
        return False
    # The registry's torchvision wheel reports a plain version even though it is a CUDA build, so the
    # test is on torch: a +cpu torch cannot host its compiled ops either way.
    if "+cpu" in torch_v:
        name = "torchvision._meta_registrations"
        sys.modules.setdefault(name, types.ModuleType(name))
        return True
    return False
