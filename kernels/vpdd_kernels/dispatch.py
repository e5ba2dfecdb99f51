"""The one switch that picks the implementation of the hot categorical operations.

``VPDD_KERNEL_IMPL`` (environment) wins over the ``kernel.impl`` config value. ``auto`` runs Triton for
CUDA tensors and PyTorch otherwise; ``triton`` off a GPU only works under ``TRITON_INTERPRET=1`` (tests).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Any, NamedTuple

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


class KernelOps(NamedTuple):
    """The four per-modality operations of one implementation (signatures of the PyTorch references)."""

    impl: str
    q_sample: Callable[..., Any]
    posterior_log_probs: Callable[..., Any]
    loss_terms: Callable[..., Any]
    reverse_step: Callable[..., Any]


def ops(impl: str) -> KernelOps:
    """The functions of a resolved implementation (``triton`` or ``torch``)."""
    if impl == "torch":
        from vpdd_kernels import loss, posterior, sampling

        return KernelOps(
            "torch", sampling.q_sample, posterior.posterior_log_probs, loss.loss_terms, sampling.reverse_step
        )
    if impl == "triton":
        ok, why = triton_status()
        if not ok:
            raise RuntimeError(f"{ENV_VAR}/kernel.impl asks for triton, but Triton cannot launch here: {why}")
        from vpdd_kernels import loss_triton as lt
        from vpdd_kernels import posterior_triton as pt
        from vpdd_kernels import sampling_triton as st

        return KernelOps("triton", st.q_sample, pt.posterior_log_probs, lt.loss_terms, st.reverse_step)
    raise ValueError(f"impl={impl!r}: expected 'triton' or 'torch' (resolve 'auto' with resolve_impl first)")


def ops_for(config_value: str = "auto", device_type: str = "cpu") -> KernelOps:
    """The switch in one call: ``ops(resolve_impl(config_value, device_type))``."""
    return ops(resolve_impl(config_value, device_type))
