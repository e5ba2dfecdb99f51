"""A markdown table comparing closed-loop evaluations (the pre-training ablation, control-rate options).

Each row is one ``metrics.json`` written by ``vpdd eval run``: mean success with its 95% Wilson interval,
per-task success, the number of episodes, and the time per environment step. The last column says whether a
row's interval overlaps the first row's (the reference), which is how the issue's "clearly above" is judged.

Paired mode (``vpdd eval compare --paired``, :func:`paired_study` and :func:`paired_table`): each row is an
arm, several ``vpdd eval run`` folders (one per training seed, matched by position across arms, evaluated on
the same scenes); per arm the hierarchical-bootstrap success interval, the paired difference to the first
arm with its bootstrap interval, and the paired t and sign-flip tests (vpdd.eval.paired).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from vpdd.eval.paired import Outcomes, StudyError, bootstrap_success, paired_comparison


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


def paired_study(arms: list[tuple[str, list[tuple[str, Outcomes]]]], n_boot: int = 4000,
                 seed: int = 0) -> dict[str, Any]:
    """``arms``: (name, [(path, outcomes) per training seed]) pairs, the first arm the reference. Every arm
    needs the reference's number of runs, and its k-th run the scenes of the reference's k-th run."""
    if len(arms) < 2:
        raise CompareError(f"a paired comparison needs at least two arms, got {[a for a, _ in arms]} "
                           "(give every run an arm name with --names)")
    ref, ref_runs = arms[0]
    for name, runs in arms[1:]:
        if len(runs) != len(ref_runs):
            raise CompareError(f"arm {name!r} has {len(runs)} runs but the reference {ref!r} has "
                               f"{len(ref_runs)}; arms are matched seed by seed, by position")
        for k, ((path, out), (ref_path, ref_out)) in enumerate(zip(runs, ref_runs, strict=True)):
            if set(out) != set(ref_out):
                raise CompareError(f"arm {name!r} run {k + 1} ({path}) was evaluated on other scenes than "
                                   f"{ref!r} run {k + 1} ({ref_path}): {len(set(out) ^ set(ref_out))} differ")
    study: dict[str, Any] = {"reference": ref, "n_boot": n_boot, "seed": seed, "arms": {}}
    ref_outcomes = [o for _, o in ref_runs]
    for i, (name, runs) in enumerate(arms):
        try:
            entry: dict[str, Any] = {"runs": [p for p, _ in runs]}
            if i == 0:
                entry["success"] = bootstrap_success(ref_outcomes, n_boot, seed)
            else:
                cmp = paired_comparison(ref_outcomes, [o for _, o in runs], n_boot, seed)
                entry["success"], entry["against_reference"] = cmp["b"], {k: cmp[k] for k in (
                    "difference", "unit", "t_test", "sign_flip")}
        except StudyError as err:
            raise CompareError(f"arm {name!r}: {err}") from None
        study["arms"][name] = entry
    return study


def _p(p: float | None) -> str:
    if p is None:
        return "-"
    return "0" if p == 0.0 else f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def paired_table(study: dict[str, Any]) -> str:
    """A markdown table of :func:`paired_study`: one row per arm."""
    ref = study["reference"]
    head = ["arm", "seeds", "mean success (95% bootstrap CI)", f"minus {ref} (95% bootstrap CI)", "paired t p",
            "sign-flip p", "test unit"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, arm in study["arms"].items():
        s, cmp = arm["success"], arm.get("against_reference")
        cells = [name, str(s["n_seeds"]), f"{s['mean']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]"]
        if cmp is None:
            cells += ["-", "-", "-", "-"]
        else:
            d, flip, t = cmp["difference"], cmp["sign_flip"], cmp["t_test"]
            spread = " (no spread)" if t["t"] is None and t["df"] is not None else ""
            cells += [f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]", _p(t["p"]) + spread,
                      f"{_p(flip['p'])} ({'exact' if flip['exact'] else 'Monte Carlo'})",
                      f"{t['n']} {cmp['unit']}"]
        lines.append("| " + " | ".join(cells) + " |")
    first = study["arms"][ref]["success"]
    n = first["n_seeds"]
    lines.append("")
    lines.append(f"{n} training seed{'s' if n != 1 else ''} per arm, {first['n_episodes']} episodes per seed on the "
                 f"same scenes in every arm; runs are paired with {ref}'s by position. Intervals: hierarchical "
                 f"bootstrap ({study['n_boot']} replicates, seed {study['seed']}) over training seeds and, within "
                 "each, scenes per task, tasks weighted equally. The tests of no difference use the per-seed "
                 "differences (with one seed, the per-scene differences, which leave the training-seed variance "
                 "out); a t test p of - (no spread) means every unit differs by the same amount (t is undefined); "
                 "with n units "
                 "the smallest sign-flip p is 2/2^n"
                 + (f" ({2 / 2 ** n:.3f} for {n} seeds)." if n >= 2 else "."))
    return "\n".join(lines)
