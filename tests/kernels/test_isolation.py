"""``vpdd_kernels`` sits above ``vpdd``: it imports only the standard library, torch, numpy and Triton."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import vpdd_kernels

ALLOWED = {"torch", "triton", "numpy", "vpdd_kernels"}
PACKAGE = Path(vpdd_kernels.__file__).parent


def test_sources_import_nothing_outside_the_allowed_layers():
    stdlib = set(sys.stdlib_module_names)
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path.name}: relative import"
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in ALLOWED or top in stdlib, f"{path.name} imports {name}"


def test_imports_and_runs_with_vpdd_blocked():
    """Every module imports, and the PyTorch fallback runs, in a process where ``import vpdd`` fails; the
    package and its switch import neither torch nor Triton."""
    modules = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    code = f"""
import sys
sys.modules["vpdd"] = None  # any import of vpdd now raises ImportError
import vpdd_kernels, vpdd_kernels.dispatch
assert "torch" not in sys.modules and "triton" not in sys.modules  # the switch alone is light
import importlib, torch
for m in {modules!r}:
    importlib.import_module("vpdd_kernels." + m)
c = vpdd_kernels.StepCoefficients(*(torch.full((1,), v, dtype=torch.float64) for v in (0.5, 0.01, 0.3) * 4))
ops = vpdd_kernels.ops("torch")
print(ops.posterior_log_probs(torch.randn(1, 2, 5), torch.tensor([[5, 1]]), c).shape)
"""
    env_path = str(PACKAGE.parent)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": env_path, "PATH": ""}
    )
    assert out.returncode == 0, out.stderr
    assert "torch.Size([1, 2, 6])" in out.stdout
