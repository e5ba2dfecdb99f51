"""The one switch that picks the implementation of the hot categorical operations.

``VPDD_KERNEL_IMPL`` (environment) wins over the ``kernel.impl`` config value. ``auto`` runs Triton for
CUDA tensors and PyTorch otherwise; ``triton`` off a GPU only works under ``TRITON_INTERPRET=1`` (tests).
"""

from __future__ import annotations

import importlib.util
import os

ENV_VAR = "VPDD_KERNEL_IMPL"
CHOICES = ("auto", "triton", "torch")


def requested_impl(config_value: str = "auto") -> str:
    value = os.environ.get(ENV_VAR) or config_value
    if value not in CHOICES:
        source = ENV_VAR if os.environ.get(ENV_VAR) else "kernel.impl"
        raise ValueError(f"{source}={value!r}: expected one of {list(CHOICES)}")
    return value


def triton_status() -> tuple[bool, str]:
    """Whether Triton kernels can launch here, and why not."""
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True, "Triton interpreter (TRITON_INTERPRET=1)"
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA device"
    return True, f"CUDA ({torch.cuda.get_device_name(0)})"


def resolve_impl(config_value: str = "auto", device_type: str = "cpu") -> str:
    """``triton`` or ``torch`` for tensors on ``device_type``."""
    impl = requested_impl(config_value)
    if impl == "auto":
        return "triton" if device_type == "cuda" and triton_status()[0] else "torch"
    return impl
