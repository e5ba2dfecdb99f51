"""Kernel tests: on a CPU-only machine the Triton kernels run in the interpreter (TRITON_INTERPRET=1).

Triton decides interpreter-or-compiled when a ``@triton.jit`` function is decorated, so the root
tests/conftest.py imports triton and the kernel modules under the variable before any test module and
restores the environment at once: other test folders never see it. Tests here get it back through the
autouse ``_interpreter_env`` fixture (``triton_status`` and the dispatch read it). With CUDA present nothing
is set and the same tests run compiled on the GPU (``device`` fixture), and the ``gpu``-marked large shapes
run too.
"""

from __future__ import annotations

import pytest
import torch

CUDA = torch.cuda.is_available()
INTERPRET = not CUDA
# the kernel modules were imported under TRITON_INTERPRET=1 by tests/conftest.py (see there)


@pytest.fixture(autouse=True)
def _interpreter_env(monkeypatch: pytest.MonkeyPatch) -> None:
    if INTERPRET:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("VPDD_KERNEL_IMPL", raising=False)


@pytest.fixture
def device() -> str:
    return "cuda" if CUDA else "cpu"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
