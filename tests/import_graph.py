"""The static import graph of the project's own modules (``vpdd.*`` under vpdd/, ``vpdd_kernels.*`` under
kernels/vpdd_kernels/), for tests/test_architecture.py and tests/test_dvc_deps.py.

Every ``import`` / ``from ... import`` statement of a file counts, at module level or inside a function or
method (a lazy import is still a dependency), resolved to the file it loads: ``from vpdd.tokenizer import
data`` is vpdd/tokenizer/data.py when that is a module, else vpdd/tokenizer/__init__.py. Imports under
``if TYPE_CHECKING:`` are marked (they never run). Nothing is imported: the files are only parsed, so the
graph is the same on a machine without torch, CUDA or a simulator.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"vpdd": REPO / "vpdd", "vpdd_kernels": REPO / "kernels" / "vpdd_kernels"}


@dataclass(frozen=True)
class Import:
    file: Path  # the importing file
    line: int
    name: str  # the dotted module it names (external modules too, e.g. "prefect.flows")
    target: Path | None  # the project file it loads, None for an external module
    type_checking: bool  # under `if TYPE_CHECKING:`

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(REPO)}:{self.line}"


def project_files() -> list[Path]:
    return sorted(p for root in ROOTS.values() for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path) -> str:
    for top, root in ROOTS.items():
        if path.is_relative_to(root):
            parts = [top, *path.relative_to(root).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise ValueError(f"{path} is not under {list(ROOTS.values())}")


def module_file(name: str) -> Path | None:
    """The file of the project module ``name`` (``pkg/__init__.py`` for a package), or None."""
    top, *rest = name.split(".")
    if top not in ROOTS:
        return None
    base = ROOTS[top].joinpath(*rest)
    for candidate in (base.with_suffix(".py") if rest else None, base / "__init__.py"):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def parent_inits(name: str) -> list[Path]:
    """The ``__init__.py`` of every package above module ``name`` (importing a.b.c runs a and a.b first)."""
    parts = name.split(".")
    return [f for i in range(1, len(parts)) if (f := module_file(".".join(parts[:i]))) is not None]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, nodes: list[ast.AST], type_checking: bool = False) -> list[Import]:
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: list[Import] = []
    for node in nodes:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            found += _imports(path, node.body, True) + _imports(path, node.orelse, type_checking)
            continue
        if isinstance(node, ast.Import):
            found += [Import(path, node.lineno, a.name, module_file(a.name), type_checking) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            names = set()  # `from a import x, y` of two names in a/__init__.py is one import of `a`
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                names.add(sub if alias.name != "*" and module_file(sub) is not None else base)
            found += [Import(path, node.lineno, n, module_file(n), type_checking) for n in sorted(names)]
        found += _imports(path, list(ast.iter_child_nodes(node)), type_checking) if not isinstance(
            node, (ast.Import, ast.ImportFrom)) else []
    return found


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


@cache
def imports_of(path: Path) -> tuple[Import, ...]:
    """Every import statement in ``path``, module-level and function-level."""
    return tuple(_imports(path, list(_tree(path).body)))


def closure(files: set[Path], skip: set[Path] = frozenset()) -> set[Path]:
    """``files`` and every project file their imports load, transitively (package ``__init__`` files
    included, TYPE_CHECKING imports not). Files in ``skip`` are not followed."""
    seen: set[Path] = set()
    todo = list(files)
    while todo:
        f = todo.pop()
        if f in seen or f in skip:
            continue
        seen.add(f)
        todo += parent_inits(module_name(f))
        todo += [i.target for i in imports_of(f) if i.target is not None and not i.type_checking]
    return seen


def function_closure(path: Path, function: str) -> set[Path]:
    """The imports that running ``function`` of module ``path`` can execute: the module's top-level imports
    and those inside ``function`` and, transitively, inside the module-level functions and classes it names.
    Returns the project files they load (not followed further: see :func:`closure`), without ``path``."""
    tree = _tree(path)
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    top = [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    nodes: list[ast.AST] = list(top)
    seen: set[str] = set()
    todo = [function]
    while todo:
        name = todo.pop()
        if name in seen or name not in defs:
            continue
        seen.add(name)
        nodes.append(defs[name])
        todo += [n.id for n in ast.walk(defs[name]) if isinstance(n, ast.Name) and n.id in defs]
    found = _imports(path, nodes)
    return {i.target for i in found if i.target is not None and not i.type_checking} - {path}
