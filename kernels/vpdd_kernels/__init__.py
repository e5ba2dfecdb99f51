"""Fused Triton kernels for VPDD's categorical diffusion operations, with their PyTorch references
(import name ``vpdd_kernels``; imports only the standard library, torch, numpy and Triton, never ``vpdd``).

Per operation (one modality, local indices with MASK = K, logits (B, N, K)): a PyTorch reference that is
the CPU fallback and the kernels' test oracle, and beside it the Triton module with private
``@triton.jit`` kernels, a host launcher of the same signature and an ``autograd.Function`` for the loss:

    posterior.py / posterior_triton.py   posterior_log_probs
    sampling.py  / sampling_triton.py    q_sample, reverse_step
    loss.py      / loss_triton.py        loss_terms (loss.py holds the one copy of the per-row algebra)

``_common`` has the constants and :class:`StepCoefficients`; ``dispatch`` is the one switch
(``VPDD_KERNEL_IMPL`` over ``kernel.impl``; auto = Triton on CUDA tensors, PyTorch elsewhere). Importing
the package or the switch imports neither torch nor Triton; the PyTorch references import torch only; the
``*_triton`` modules import Triton (the interpreter must be chosen before that import).
"""

from vpdd_kernels.dispatch import ENV_VAR, KernelOps, ops, ops_for, requested_impl, resolve_impl, triton_status

_FROM_COMMON = ("EPS", "FLOOR", "LOG_FLOOR", "StepCoefficients", "kept_sorted")
__all__ = ["ENV_VAR", "KernelOps", "ops", "ops_for", "requested_impl", "resolve_impl", "triton_status", *_FROM_COMMON]


def __getattr__(name: str):
    """``_common``'s public names, loaded on first use: the switch alone must not import torch (lineage
    records resolve the implementation without it)."""
    if name in _FROM_COMMON:
        from vpdd_kernels import _common

        return getattr(_common, name)
    raise AttributeError(f"module 'vpdd_kernels' has no attribute {name!r}")
