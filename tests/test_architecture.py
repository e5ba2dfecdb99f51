"""Package dependencies point one way: the layer table of docs/architecture.md, checked on every import.

Every ``.py`` under vpdd/ and kernels/vpdd_kernels/ is parsed (tests/import_graph.py; nothing is imported)
and every import statement counts, inside functions too: a lazy import is still a dependency. Imports under
``if TYPE_CHECKING:`` never run and are exempt from the layer and cycle rules (an annotation may name a type
from below); they still may not name Prefect or flows/. The table in docs/architecture.md is the source of
truth: a package missing from it fails, so a new package has to be placed before it is used.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KERNEL_DEPS = {"torch", "triton", "numpy", "vpdd_kernels"}


def _graph():
    name = "vpdd_test_import_graph"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("import_graph.py"))
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


def layers() -> dict[str, int]:
    """``{package: layer}`` from the table of docs/architecture.md (rows ``| 3 | `vpdd.config` | ... |``)."""
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*`([\w.]+)`\s*\|", (REPO / "docs/architecture.md").read_text(), re.M)
    assert rows, "docs/architecture.md has no layer table"
    return {pkg: int(layer) for layer, pkg in rows}


def package(module: str) -> str:
    """``vpdd.data.peract`` -> ``vpdd.data``; ``vpdd`` -> ``vpdd``; ``vpdd_kernels.loss`` -> ``vpdd_kernels``."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "vpdd" else parts[0]


def edges():
    """(importing package, imported package, Import) for every project-internal import that runs."""
    g = _graph()
    for f in g.project_files():
        src = package(g.module_name(f))
        for imp in g.imports_of(f):
            if imp.target is not None and not imp.type_checking:
                yield src, package(g.module_name(imp.target)), imp


def test_every_package_has_a_layer():
    g = _graph()
    known = layers()
    found = {package(g.module_name(f)) for f in g.project_files()}
    missing = sorted(found - set(known))
    assert not missing, f"packages missing from the layer table in docs/architecture.md: {missing}"


def test_imports_follow_the_layer_order():
    known = layers()
    bad = [f"{imp.where}: {src} (layer {known[src]}) imports {dst} (layer {known[dst]}): `{imp.name}`"
           for src, dst, imp in edges() if src != dst and known.get(dst, -1) > known.get(src, -1)]
    assert not bad, ("imports against the layer order of docs/architecture.md (a package may import only from "
                     "the layers above it):\n" + "\n".join(bad))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one package (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_packages():
    graph: dict[str, set[str]] = defaultdict(set)
    example: dict[tuple[str, str], str] = {}
    for src, dst, imp in edges():
        if src != dst:
            graph[src].add(dst)
            example.setdefault((src, dst), imp.where)
    cycles = _cycles(graph)
    lines = []
    for comp in cycles:
        lines.append(" <-> ".join(comp) + ":")
        lines += [f"  {a} -> {b} (e.g. {example[a, b]})" for a in comp for b in comp if (a, b) in example]
    assert not cycles, "import cycles between packages:\n" + "\n".join(lines)


def test_the_library_never_imports_prefect_or_flows():
    """The library is called by the flows, never the other way round; not even a lazy or type-only import."""
    g = _graph()
    flow_modules = {p.stem for p in (REPO / "flows").glob("*.py")} | {"flows"}
    bad = [f"{imp.where}: `{imp.name}`" for f in g.project_files() for imp in g.imports_of(f)
           if imp.name.split(".")[0] in {"prefect"} | flow_modules]
    assert not bad, "the library imports Prefect or flows/:\n" + "\n".join(bad)


def test_kernels_import_only_stdlib_torch_triton_numpy():
    g = _graph()
    bad = [f"{imp.where}: `{imp.name}`" for f in g.project_files() if g.module_name(f).startswith("vpdd_kernels")
           for imp in g.imports_of(f)
           if imp.name.split(".")[0] not in KERNEL_DEPS and imp.name.split(".")[0] not in sys.stdlib_module_names]
    assert not bad, "vpdd_kernels imports beyond the standard library, torch, triton and numpy:\n" + "\n".join(bad)


def test_the_import_graph_sees_lazy_and_relative_imports(tmp_path, monkeypatch):
    """The walker itself, on a small package tree: function-level imports count, TYPE_CHECKING ones are
    marked, ``from . import x`` resolves, and a module of a package wins over a name in its ``__init__``."""
    g = _graph()
    assert ("vpdd.train.loop", False) in {(i.name, i.type_checking) for i in g.imports_of(REPO / "vpdd/cli/train.py")}
    root = tmp_path / "vpdd"
    for rel in ("__init__.py", "cli/__init__.py", "cli/common.py", "models/__init__.py", "models/model.py",
                "lineage/__init__.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("")
    probe = root / "cli" / "probe.py"
    probe.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from vpdd.models import model\n"
                     "def f():\n    from . import common\n    from vpdd.lineage import build_lineage, read_lineage\n")
    monkeypatch.setitem(g.ROOTS, "vpdd", root)
    found = [(i.name, i.type_checking, i.target) for i in g.imports_of(probe)]
    assert ("vpdd.models.model", True, root / "models/model.py") in found
    assert ("vpdd.cli.common", False, root / "cli/common.py") in found
    assert [f for f in found if f[0] == "vpdd.lineage"] == [("vpdd.lineage", False, root / "lineage/__init__.py")]
    assert g.closure({probe}) == {probe, root / "__init__.py", root / "cli/__init__.py", root / "cli/common.py",
                                  root / "lineage/__init__.py"}  # the TYPE_CHECKING import is not followed
