"""The RLBench fixtures: the session's artefacts of tests/rlbench/artefacts.py (loaded by path: conftest
modules are not importable under --import-mode=importlib) and a helper namespace."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest


def _artefacts():
    name = "vpdd_test_rlbench_artefacts"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / "artefacts.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def rlb_data(tmp_path_factory, synthetic) -> Path:
    """The generated PerAct-format dataset."""
    return _artefacts().data(synthetic, tmp_path_factory.mktemp("rlbench"))


@pytest.fixture(scope="session")
def rlb_tokens(rlb_data, synthetic) -> dict[str, Path]:
    """A tokenizer trained on the exported views (4 steps) and the multi-view token cache."""
    return _artefacts().tokens(synthetic, rlb_data.parent)


@pytest.fixture(scope="session")
def rlb_trained(rlb_tokens, synthetic) -> dict[str, Path]:
    """The artefacts plus a pre-trained multi-view model and a fine-tuned keyframe policy (4 steps each)."""
    return _artefacts().trained(synthetic, rlb_tokens["root"])


@pytest.fixture(scope="session")
def rlb(synthetic):
    """Helpers for the tests."""
    a = _artefacts()
    return SimpleNamespace(
        RES=a.RES, TASKS=a.TASKS, CAMERAS=a.CAMERAS,
        params=lambda **o: a.rlbench_params(synthetic, **o),
        config=lambda **o: a.rlbench_config(synthetic, **o),
        write_params=lambda path, **o: a.write_rlbench_params(synthetic, path, **o),
        replace=a.replace_rlbench,
    )
