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
the package, the PyTorch references or the switch does not import Triton (the interpreter must be chosen
before that import); the ``*_triton`` modules do.
"""

from vpdd_kernels._common import EPS, FLOOR, LOG_FLOOR, StepCoefficients, kept_sorted
from vpdd_kernels.dispatch import ENV_VAR, KernelOps, ops, ops_for, requested_impl, resolve_impl, triton_status

__all__ = ["ENV_VAR", "EPS", "FLOOR", "LOG_FLOOR", "KernelOps", "StepCoefficients", "kept_sorted", "ops", "ops_for"]
__all__ += ["requested_impl", "resolve_impl", "triton_status"]
