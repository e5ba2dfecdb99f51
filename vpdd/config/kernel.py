"""Config group ``kernel``: which implementation runs the hot categorical operations."""

from __future__ import annotations

from dataclasses import dataclass

from vpdd.config.base import Check, Validated, one_of


@dataclass
class KernelConfig(Validated):
    # auto: Triton for CUDA tensors, PyTorch elsewhere. The VPDD_KERNEL_IMPL environment variable wins.
    impl: str = "auto"

    def checks(self) -> list[Check]:
        return [one_of(self, "impl", ("auto", "triton", "torch"))]
