"""Every DVC stage's ``deps:`` cover the project code its command runs (computed, not listed by hand).

How the code of a stage is found, and why this way:

1. The stage's ``cmd`` (``vpdd <group> <command> ...``; ``matrix:`` stages expanded with params.yaml, as
   DVC does) is parsed by the real ``vpdd`` argument parser, which names the handler function argparse
   would call (``args.func``). Nothing is run. This follows the CLI's own dispatch instead of a copy of it.
2. From that handler, a static AST walk (tests/import_graph.py): the CLI module's top-level imports, the
   imports inside the handler and inside the module-level helpers it names, then every project module those
   load, transitively, counting imports inside functions. The CLI keeps heavy imports inside its command
   functions, so importing a CLI module and reading ``sys.modules`` would miss exactly the code a stage runs;
   and executing the command is what DVC does, not a test. Inside the library the walk counts all of a
   module's lazy imports, not only those of the functions called: a slight over-approximation, the safe
   side for a cache key.
3. ``vpdd/cli/__init__.py`` (the console script's dispatcher: it registers every command group to build the
   parser) is not followed: a stage runs its own command, not the other groups.

A file is covered when a dep is that file or a folder above it.
"""

from __future__ import annotations

import importlib.util
import inspect
import shlex
import sys
from pathlib import Path

import pytest

from vpdd.lineage import pipeline_stages

REPO = Path(__file__).resolve().parents[1]


def _graph():
    name = "vpdd_test_import_graph"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("import_graph.py"))
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


STAGES = pipeline_stages(REPO, expand=True)


def stage_code(cmd: str) -> set[Path]:
    """The project files the stage command ``cmd`` runs (see the module docstring)."""
    from vpdd.cli import build_parser

    g = _graph()
    argv = shlex.split(cmd)
    assert argv and argv[0] == "vpdd", f"not a vpdd command: {cmd}"
    handler = build_parser().parse_args(argv[1:]).func
    cli_module = Path(inspect.getsourcefile(handler)).resolve()
    start = g.function_closure(cli_module, handler.__name__)
    # the CLI module itself counts, but only the handler's part of it is followed
    return {cli_module} | g.closure(start, skip={g.module_file("vpdd.cli"), cli_module})


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(REPO).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


def test_every_stage_is_a_vpdd_command_with_code():
    assert STAGES and any("@" in name for name in STAGES), "matrix stages are expanded"
    for name, stage in STAGES.items():
        code = stage_code(stage.cmd)
        assert any(p.match("vpdd/cli/*.py") for p in (c.relative_to(REPO) for c in code)), name
        assert "${" not in stage.cmd and not any("${" in d for d in stage.deps), name


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_deps_cover_the_code_its_command_imports(stage):
    info = STAGES[stage]
    missing = sorted(p.relative_to(REPO).as_posix() for p in stage_code(info.cmd) if not covered(p, info.deps))
    assert not missing, (f"dvc.yaml stage {stage!r} (`{info.cmd.split(' --')[0]}`) runs code no dep covers; add "
                         f"to its deps: {missing}")


def test_code_deps_exist():
    """A dep on moved or deleted code makes `dvc repro` fail; name it here first."""
    gone = sorted({f"{name}: {d}" for name, s in STAGES.items() for d in s.deps
                   if d.startswith(("vpdd/", "kernels/")) and not (REPO / d).exists()})
    assert not gone, "dvc.yaml deps on code that does not exist:\n" + "\n".join(gone)
