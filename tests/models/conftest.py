"""Fixtures: the shared small artefacts of tests/train/synthetic.py (built once per session)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest


def _synthetic():
    name = "vpdd_test_synthetic"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "train" / "synthetic.py"
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
