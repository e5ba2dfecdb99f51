"""Closed-loop success over several training seeds, arms compared seed by seed on the same scenes.

One training run says little here: between fine-tuning seeds the mean success moves by about 0.07-0.09, more
than the episode-level interval of one run. A study is a set of arms (e.g. ``finetune.foresight`` values),
each trained with the same seeds and evaluated on the same scenes (``vpdd eval run``'s ``episodes.json``).
:func:`seed_study` reports, per arm, the success of every seed and their mean with a 95% Student-t interval
*over seeds*; per arm against the baseline arm, the difference of the two runs of each seed and its t
interval over seeds (the paired comparison that counts), and, for reference, the interval over the scenes
of all seeds pooled (which leaves the training-seed variance out, so it is narrower than it should be).

``benchmarks/finetune_seeds.py`` runs such a study and writes this module's table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from vpdd.eval.paired import StudyError, outcomes

# 97.5% quantiles of Student's t for 1..10 degrees of freedom (two-sided 95% intervals); more: 1.96 + 2.4/df
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def t975(df: int) -> float:
    if df < 1:
        raise ValueError(f"df={df}: a t interval needs at least two values")
    return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.4 / df


def mean_interval(values: np.ndarray, bounds: tuple[float, float] = (-1.0, 1.0)) -> dict[str, Any]:
    """Mean, sample standard deviation and 95% t interval of ``values`` (no interval for a single value),
    the interval clipped to ``bounds`` (what a success rate, or a difference of two, can be)."""
    v = np.asarray(values, dtype=float)
    mean = float(v.mean())
    if len(v) < 2:
        return {"mean": mean, "std": None, "ci95": None, "n": int(len(v))}
    std = float(v.std(ddof=1))
    half = t975(len(v) - 1) * std / math.sqrt(len(v))
    lo, hi = bounds
    return {"mean": mean, "std": std, "ci95": [max(lo, mean - half), min(hi, mean + half)], "n": int(len(v))}


def read_study(root: str | Path) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """``root/<arm>/seed<k>/eval/episodes.json`` as {arm: {seed: episodes}} (pairs without one are skipped)."""
    root = Path(root)
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for path in sorted(root.glob("*/seed*/eval/episodes.json")):
        arm, seed = path.parents[2].name, int(path.parents[1].name.removeprefix("seed"))
        try:
            runs.setdefault(arm, {})[seed] = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise StudyError(f"{path}: not JSON ({err})") from None
    if not runs:
        raise StudyError(f"{root}: no <arm>/seed<k>/eval/episodes.json; run the study first")
    return runs


def seed_study(runs: dict[str, dict[int, list[dict[str, Any]]]], baseline: str) -> dict[str, Any]:
    """The study's numbers (see the module docstring). Every arm must have the baseline's seeds (only the
    seeds all arms share are compared) and, per seed, exactly the baseline's scenes."""
    if baseline not in runs:
        raise StudyError(f"baseline arm {baseline!r} has no runs (arms: {sorted(runs)})")
    seeds = sorted(set.intersection(*(set(r) for r in runs.values())))
    if not seeds:
        raise StudyError(f"no seed is shared by all arms: {({a: sorted(r) for a, r in runs.items()})}")
    scenes = {s: outcomes(runs[baseline][s], f"{baseline} seed {s}") for s in seeds}
    tasks = sorted({k[0] for k in scenes[seeds[0]]})
    arms: dict[str, Any] = {}
    for arm, by_seed in runs.items():
        per_seed, per_task, diffs, pooled = {}, {t: [] for t in tasks}, [], []
        for s in seeds:
            out = outcomes(by_seed[s], f"{arm} seed {s}")
            if set(out) != set(scenes[s]):
                raise StudyError(f"{arm} seed {s}: evaluated on other scenes than {baseline} seed {s} "
                                 f"({len(set(out) ^ set(scenes[s]))} differ); the arms must share the protocol")
            keys = sorted(out)
            mine = np.array([out[k] for k in keys], dtype=float)
            ref = np.array([scenes[s][k] for k in keys], dtype=float)
            per_seed[s] = float(mine.mean())
            for t in tasks:
                per_task[t].append(float(np.mean([out[k] for k in keys if k[0] == t])))
            diffs.append(float((mine - ref).mean()))
            pooled.append(mine - ref)
        d = np.concatenate(pooled)
        half = 1.959964 * d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
        arms[arm] = {
            "per_seed": per_seed, "over_seeds": mean_interval(np.array(list(per_seed.values())), (0.0, 1.0)),
            "per_task": {t: float(np.mean(v)) for t, v in per_task.items()},
            "episodes_per_seed": len(scenes[seeds[0]]),
            "minus_baseline": None if arm == baseline else {
                "per_seed": dict(zip(seeds, diffs, strict=True)), "over_seeds": mean_interval(np.array(diffs)),
                "over_scenes": {"mean": float(d.mean()), "ci95": [float(d.mean() - half), float(d.mean() + half)],
                                "n": int(len(d))}},
        }
    return {"baseline": baseline, "seeds": seeds, "tasks": tasks, "arms": arms}


def _fmt(stat: dict[str, Any] | None, signed: bool = False) -> str:
    if stat is None:
        return "-"
    f = "{:+.3f}" if signed else "{:.3f}"
    ci = stat.get("ci95")
    return f.format(stat["mean"]) + ("" if ci is None else " [" + ", ".join(f.format(c) for c in ci) + "]")


def seed_study_table(study: dict[str, Any]) -> str:
    """A markdown table of :func:`seed_study`: one row per arm."""
    seeds, tasks, base = study["seeds"], study["tasks"], study["baseline"]
    head = ["arm", "mean over seeds (95% t CI)", *(f"seed {s}" for s in seeds),
            *(t.removesuffix("-v3") for t in tasks), f"minus {base}: over seeds (95% t CI)",
            f"minus {base}: over scenes (95% CI)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, a in study["arms"].items():
        diff = a["minus_baseline"]
        cells = [arm, _fmt(a["over_seeds"]), *(f"{a['per_seed'][s]:.3f}" for s in seeds),
                 *(f"{a['per_task'][t]:.2f}" for t in tasks),
                 _fmt(diff and diff["over_seeds"], True), _fmt(diff and diff["over_scenes"], True)]
        lines.append("| " + " | ".join(cells) + " |")
    n = study["arms"][base]["episodes_per_seed"]
    lines.append("")
    lines.append(f"{len(seeds)} training seeds per arm, {n} episodes per seed on the same scenes in every arm. "
                 "Intervals over seeds use Student's t with n-1 degrees of freedom; the interval over scenes pools "
                 "all seeds' paired episodes and leaves out the seed-to-seed variance.")
    return "\n".join(lines)
