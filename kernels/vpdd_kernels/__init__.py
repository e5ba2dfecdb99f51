"""Fused Triton kernels for VPDD's categorical diffusion operations (import name ``vpdd_kernels``).

Per operation: private ``@triton.jit`` kernels, a host launcher with the signature of the PyTorch fast
path in :mod:`vpdd.diffusion.fast` (the fallback), an ``autograd.Function`` for the loss; the oracle is
:mod:`vpdd.diffusion.reference`. Modules: ``posterior``, ``sampling`` (``q_sample``, ``reverse_step``),
``loss``, ``dispatch`` (the one switch), ``benchmark`` (``vpdd bench kernels``).

Importing this package does not import Triton (the interpreter must be chosen before that import); the
kernel modules do.
"""

from vpdd_kernels.dispatch import ENV_VAR, KernelOps, ops, ops_for, requested_impl, resolve_impl, triton_status

__all__ = ["ENV_VAR", "KernelOps", "ops", "ops_for", "requested_impl", "resolve_impl", "triton_status"]
