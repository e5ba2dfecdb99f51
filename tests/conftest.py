"""Shared test setup: offscreen rendering, offline hubs, the repository root, small configs."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _import_triton_for_the_interpreter() -> None:
    """Without CUDA the kernel tests run Triton's interpreter, and Triton picks interpreter-or-compiled when
    a ``@triton.jit`` function is decorated: its own library's (``tl.randint4x``) at ``import triton``. Any
    test module may import triton first (GPT-2 pulls it in), so this root conftest, loaded before every
    test module, imports triton and the kernels under TRITON_INTERPRET=1 and restores the variable;
    tests/kernels/conftest.py sets it again around each kernel test."""
    import torch

    if torch.cuda.is_available() or importlib.util.find_spec("triton") is None:
        return
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        for mod in ("triton", "vpdd_kernels.posterior_triton", "vpdd_kernels.sampling_triton",
                    "vpdd_kernels.loss_triton"):
            importlib.import_module(mod)
    finally:
        if saved is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved


_import_triton_for_the_interpreter()

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture
def tool_env() -> dict[str, str]:
    """Environment for subprocesses: the venv's console scripts (vpdd, dvc) first on PATH."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


# The small synthetic artefacts of tests/train/synthetic.py (episodes, corpus, tiny tokenizer, token
# cache, pre-trained model, policy), built once per session and shared by tests/models, tests/policy and
# tests/train.
def _synthetic():
    name = "vpdd_test_synthetic"
    if name not in sys.modules:
        path = Path(__file__).resolve().parent / "train" / "synthetic.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def synthetic():
    """The helper module (params(), config(), write_params(), RES, TASKS, ...)."""
    return _synthetic()


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory):
    """robot episodes, corpus, tiny tokenizer and its token cache."""
    return _synthetic().artefacts(tmp_path_factory.mktemp("vpdd_synthetic"))


@pytest.fixture(scope="session")
def trained(artefacts):
    """The artefacts plus a pre-trained model and a fine-tuned policy (6 steps each)."""
    return _synthetic().trained(artefacts["root"])
