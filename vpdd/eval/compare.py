"""A markdown table comparing closed-loop evaluations (the pre-training ablation, control-rate options).

Each row is one ``metrics.json`` written by ``vpdd eval run``: mean success with its 95% Wilson interval,
per-task success, the number of episodes, and the time per environment step. The last column says whether a
row's interval overlaps the first row's (the reference), which is how the issue's "clearly above" is judged.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any


class CompareError(ValueError):
    """Rows that cannot be compared (names the row and the problem)."""


def _exp_ref(name: str) -> str | None:
    """The git ref of the DVC experiment ``name`` (refs/exps/<xx>/<baseline>/<name>), if there is one."""
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], capture_output=True,
                          text=True, check=False).stdout.split()
    hits = [r for r in refs if r.rsplit("/", 1)[-1] == name]
    return hits[-1] if hits else None


def read_metrics(spec: str) -> dict[str, Any]:
    """A metrics.json from a file, or ``REV:PATH`` from a git revision or DVC experiment name, joined with
    the run.json beside it where there is one (timing, settings: vpdd.utils.records)."""
    from vpdd.utils.records import read_record, sidecar_path

    if Path(spec).is_file() or ":" not in spec:
        return read_record(spec)
    rev, path = spec.split(":", 1)
    ref = _exp_ref(rev) or rev
    proc = subprocess.run(["git", "show", f"{ref}:{path}"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ValueError(f"no {path} in git revision or DVC experiment {rev!r} ({proc.stderr.strip()})")
    record = json.loads(proc.stdout)
    side = subprocess.run(["git", "show", f"{ref}:{sidecar_path(path).as_posix()}"], capture_output=True, text=True,
                          check=False)
    if side.returncode == 0:
        record.update(json.loads(side.stdout))
    return record


def _ci(ci: list[float]) -> str:
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def overlaps(a: list[float], b: list[float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def comparison_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """``rows``: (name, metrics) pairs, the first being the reference."""
    if not rows:
        raise CompareError("nothing to compare: expected at least one metrics.json")
    for name, m in rows:
        missing = [k for k in ("tasks", "mean_success", "ci95", "episodes") if k not in m]
        if missing:
            raise CompareError(f"{name}: not a `vpdd eval run` metrics.json (missing {missing})")
    tasks = list(rows[0][1]["tasks"])
    for name, m in rows[1:]:
        if list(m["tasks"]) != tasks:
            raise CompareError(f"{name}: evaluated on {list(m['tasks'])}, but {rows[0][0]} on {tasks}")
    short = [t.removesuffix("-v3") for t in tasks]
    head = ["run", "mean success (95% CI)", *short, "episodes", "s / env step", f"CI overlaps {rows[0][0]}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ref_ci = rows[0][1]["ci95"]
    for i, (name, m) in enumerate(rows):
        timing = m.get("timing", {}).get("s_per_env_step")
        cells = [
            name, f"{m['mean_success']:.3f} {_ci(m['ci95'])}",
            *(f"{m['tasks'][t]['success']:.2f}" for t in tasks), str(m["episodes"]),
            f"{timing:.3f}" if timing is not None else "-",
            "-" if i == 0 else ("yes" if overlaps(m["ci95"], ref_ci) else "no"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
