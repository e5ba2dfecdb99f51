"""``vpdd study``: a grid of pre-training arms x demonstrations x fine-tuning seeds, run and reported (docs/study.md).

    vpdd study run [conf/study/pretraining.yaml] [--max-cells N] [--demos 1 3] [--arms none robot] [--jobs J]
    vpdd study status [conf/study/pretraining.yaml]
    vpdd study report [conf/study/pretraining.yaml]

``run`` pre-trains each arm once, then fine-tunes and evaluates the pending cells (resumable: a study run
again continues where it stopped) and rewrites the report after the run. Scratch goes to
``build/study/<name>`` (``--out``), the records a person reads and git versions to ``results/study/<name>``
(``--results``): ``table.md``, ``summary.json`` (DVC metrics), ``success.json`` / ``success.png`` (DVC plots),
``state.json`` (progress and seconds per cell).
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_SPEC = "conf/study/pretraining.yaml"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="the pre-training study: arms x demonstrations x seeds, paired statistics")
    sp = p.add_subparsers(dest="study_cmd", required=True)
    for name, help_text in (("run", "run the pending cells (resumable), then write the report"),
                            ("status", "which cells are done, pending, or were run with other settings"),
                            ("report", "the table, summary and plot from the finished cells' records")):
        c = sp.add_parser(name, help=help_text)
        c.add_argument("spec", nargs="?", default=DEFAULT_SPEC, help=f"study file (default: {DEFAULT_SPEC})")
        c.add_argument("--out", help="scratch folder (default: build/study/<name>)")
        c.add_argument("--results", help="records folder (default: results/study/<name>)")
        if name == "run":
            c.add_argument("--max-cells", type=int, help="run at most this many pending cells, then stop")
            c.add_argument("--demos", type=int, nargs="+", help="only cells with these demonstration counts")
            c.add_argument("--arms", nargs="+", help="only these arms")
            c.add_argument("--jobs", type=int, help="cells at once (default: the study's jobs)")
        c.set_defaults(func={"run": _run, "status": _status, "report": _report}[name])


def _setup(args: argparse.Namespace):
    from pathlib import Path

    from vpdd.study.spec import load_spec

    spec = load_spec(args.spec)
    if getattr(args, "jobs", None):
        spec.jobs = args.jobs
    out = Path(args.out or f"build/study/{spec.name}")
    results = Path(args.results or f"results/study/{spec.name}")
    return spec, out, results


def _print(line: str) -> None:
    print(line, flush=True)


def _run(args: argparse.Namespace) -> int:
    from vpdd.study.report import write_report
    from vpdd.study.runner import StudyRunError, StudyRunner

    spec, out, results = _setup(args)
    runner = StudyRunner(spec, out, results, echo=_print)
    try:
        state = runner.run(max_cells=args.max_cells, only_demos=args.demos, only_arms=args.arms)
    except StudyRunError as err:
        print(f"vpdd study run: error: {err}", file=sys.stderr)
        return 1
    _print(f"{state['done']} of {state['cells']} cells done")
    if state["done"]:
        from vpdd.study.report import summary_table

        _print(summary_table(write_report(spec, results)))
    return 0


def _status(args: argparse.Namespace) -> int:
    from vpdd.study.runner import StudyRunner
    from vpdd.study.spec import plan

    spec, out, results = _setup(args)
    runner = StudyRunner(spec, out, results)
    counts: dict[str, int] = {}
    for cell in plan(spec):
        st = runner.status(runner.job(cell))
        counts[st] = counts.get(st, 0) + 1
        _print(f"{st:8s} {cell.path}")
    _print(", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return 0


def _report(args: argparse.Namespace) -> int:
    from vpdd.study.report import summary_table, write_report

    spec, _, results = _setup(args)
    _print(summary_table(write_report(spec, results)))
    return 0
